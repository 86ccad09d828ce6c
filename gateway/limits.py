"""Per-account limits in Redis: rate windows, period quotas, concurrency, token reservations.

One Lua call admits a request against every limit at once (`lua/limits_admit.lua`), reserving
its prompt estimate plus its completion cap; another settles it with the tokens it really used
(`lua/limits_settle.lua`). All of an account's keys share the hash tag `{a:<id>}`, so both
scripts stay on one Redis Cluster slot.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis.asyncio as aioredis

_LUA = Path(__file__).parent / "lua"
UNLIMITED = -1


@dataclass(frozen=True, slots=True)
class Limits:
    """An account's effective limits (its override, else its tier's); None means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    max_concurrent_requests: int | None = None
    max_tokens_per_request: int | None = None
    max_context_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    # Which limit refused: concurrent, requests, tokens, tokens_per_day, tokens_per_month.
    reason: str
    retry_after_ms: int
    requests_used: int
    requests_reset_ms: int
    tokens_used: int
    tokens_reset_ms: int
    # What settling needs: the exact keys admitted against (the day may roll over meanwhile).
    keys: tuple[str, ...]
    reserved: int


def account_keys(account_id: int, now: datetime) -> tuple[str, ...]:
    tag = f"{{a:{account_id}}}"
    return (
        f"{tag}:rpm",
        f"{tag}:tpm",
        f"{tag}:tpm:amounts",
        f"{tag}:tpm:sum",
        f"{tag}:tpd:{now:%Y%m%d}",
        f"{tag}:tpmo:{now:%Y%m}",
        f"{tag}:concurrent",
    )


def period_ends(now: datetime) -> tuple[int, int]:
    """Whole seconds from `now` to the end of its UTC day and of its UTC month."""
    day_end = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    month_end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return (
        max(1, int((day_end - now).total_seconds())),
        max(1, int((month_end - now).total_seconds())),
    )


class Limiter:
    def __init__(self, client: aioredis.Redis, *, lease_seconds: float) -> None:
        self.lease_ms = int(lease_seconds * 1000)
        self._admit = client.register_script((_LUA / "limits_admit.lua").read_text())
        self._settle = client.register_script((_LUA / "limits_settle.lua").read_text())

    async def admit(
        self, *, account_id: int, request_id: str, reserve: int, limits: Limits, now: datetime
    ) -> Admission:
        keys = account_keys(account_id, now)
        day_left, month_left = period_ends(now)
        reply = await self._admit(
            keys=keys,
            args=[
                int(now.timestamp() * 1000),
                request_id,
                reserve,
                _limit(limits.requests_per_minute),
                _limit(limits.tokens_per_minute),
                _limit(limits.tokens_per_day),
                _limit(limits.tokens_per_month),
                _limit(limits.max_concurrent_requests),
                self.lease_ms,
                day_left,
                month_left,
            ],
        )
        admitted, reason, retry_after, requests, requests_reset, tokens, tokens_reset = reply
        return Admission(
            admitted=bool(admitted),
            reason=reason.decode() if isinstance(reason, bytes) else str(reason),
            retry_after_ms=int(retry_after),
            requests_used=int(requests),
            requests_reset_ms=int(requests_reset),
            tokens_used=int(tokens),
            tokens_reset_ms=int(tokens_reset),
            keys=keys,
            reserved=reserve,
        )

    async def settle(self, admission: Admission, *, request_id: str, used: int) -> None:
        await self._settle(keys=admission.keys, args=[request_id, admission.reserved, used])


def _limit(value: int | None) -> int:
    return UNLIMITED if value is None else value
