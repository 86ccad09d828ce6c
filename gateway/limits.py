"""Per-account and per-project limits in Redis: rate windows, period quotas, concurrency,
token reservations, and the month's spend against a budget's hard cap.

One Lua call admits a request against every limit of its account and of its key's project at
once (`lua/limits_admit.lua`), reserving its prompt estimate plus its completion cap, and their
most possible cost in pico-units (10^-12) of billing's currency (gateway/pricing.py); another
settles it at both levels with the tokens it really used and what they cost
(`lua/limits_settle.lua`). All of an account's keys, its projects' included
(`{a:<id>}:p:<project id>:…`), share the hash tag `{a:<id>}`, so both scripts stay on one Redis
Cluster slot and the project level costs no extra round trip.

A prepaid account's credit balance (metering/credits.py) is one more limit in the same call:
admitted only while the balance covers the request's most possible cost, which is taken off it
and held under the request's id until the settle gives back what the request did not cost.

Money is exact: Redis adds it with INCRBY (64-bit integers), the amounts travel as decimal
strings, and the scripts compare them as strings, never as Lua numbers (doubles, exact only
to 2^53 pico-units, about 9,000 of the currency).
"""

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from gateway.batching import ScriptBatcher
from gateway.pricing import (
    DEFAULT_CURRENCY,
    REQUEST_MOST,
    SPEND_CEILING,
    month_spend_by_project,
    pico_amount,
    shown,
)
from metering.credits import CREDIT_EPOCH, credit_held_key, credit_keys
from metering.redis_scripts import SCRIPTS
from metering.selectors import period_totals

log = logging.getLogger(__name__)

_ADMIT = SCRIPTS["limits_admit"]
_SETTLE = SCRIPTS["limits_settle"]
_PEEK = SCRIPTS["limits_peek"]
UNLIMITED = -1
# Keys per level (account_keys, project_keys).
_LEVEL_KEYS = 8
# Indexes into account_keys() and project_keys().
_DAY, _MONTH, _SLOTS, _SPEND = 4, 5, 6, 7
# Present while Redis holds the quota counters; gone after Redis lost its data.
_EPOCH = "{limits}:epoch"
# Present once the spend counters are in pico-units: the first gateway to find it missing
# (Redis lost its data, or the counters were in micro-units before) rebuilds them.
_SPEND_EPOCH = "{limits}:epoch:spend-pico"
# Present once projects' day, month and spend counters hold the ledger's: the first gateway to
# find it missing (Redis lost its data, or projects' counters are new) rebuilds them.
_PROJECT_EPOCH = "{limits}:epoch:projects"
_REBUILDING = "{limits}:rebuilding"


@dataclass(frozen=True, slots=True)
class Limits:
    """An account's effective limits (its override, else its tier's), or a project's own
    (checked as well as its account's); None means unlimited (for a project: as the
    account)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    max_concurrent_requests: int | None = None
    max_tokens_per_request: int | None = None
    max_context_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Spend:
    """The money side of an admission, in pico-units of billing's currency."""

    currency: str = DEFAULT_CURRENCY
    # The most the request can cost; 0 when unpriced (nothing is counted).
    reserve: int = 0
    # The month's hard cap: refused once the spend reaches it. None: not capped.
    cap: int | None = None
    # The project's hard cap, against the project's own spend. None: not capped.
    project_cap: int | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    # Which limit refused: concurrent, requests, tokens, tokens_per_day, tokens_per_month,
    # budget, credit (a prepaid balance short of the request's most possible cost),
    # credit_unknown (no balance, and Redis lost the credit counters: billing has not rebuilt
    # them yet); and at which level: "account" or "project" ("" when admitted).
    reason: str
    retry_after_ms: int
    requests_used: int
    requests_reset_ms: int
    tokens_used: int
    tokens_reset_ms: int
    # What settling needs: the exact keys admitted against (the day may roll over meanwhile).
    keys: tuple[str, ...]
    reserved: int
    # Pico-units counted for it: its Spend.reserve (at most REQUEST_MOST), 0 where the counter
    # was saturated.
    spend_reserved: int = 0
    level: str = ""
    # The project's windows as the account's above (0 where the project has no such limit,
    # or was not checked), and the pico-units counted for it at the project.
    project_requests_used: int = 0
    project_requests_reset_ms: int = 0
    project_tokens_used: int = 0
    project_tokens_reset_ms: int = 0
    project_spend_reserved: int = 0
    # Admitted against a prepaid balance: the pico-units taken off it for this request, and
    # the balance after that (at a refusal: the balance then; None where it has none).
    prepaid: bool = False
    credit_reserved: int = 0
    balance: int | None = None


@dataclass(frozen=True, slots=True)
class Credit:
    """A prepaid account's credit, in pico-units of billing's currency."""

    # Available to admit requests now, reservations in flight taken off; None while Redis has
    # no counters (it lost its data and billing has not rebuilt them yet).
    balance: int | None
    # Held for requests in flight at their most possible cost; what they did not cost comes
    # back when they settle.
    reserved: int

    def shown(self, currency: str) -> dict[str, str | None]:
        """As GET /v1/usage and /api/v1/me/ show it: exact decimal strings of `currency`
        (billing's), the balance null while it cannot be read."""
        return {
            "currency": currency,
            "balance": None if self.balance is None else shown(pico_amount(self.balance)),
            "reserved": shown(pico_amount(self.reserved)),
        }


@dataclass(frozen=True, slots=True)
class Standing:
    """An account's use of its limits at one instant."""

    requests_last_minute: int
    tokens_last_minute: int
    tokens_today: int
    tokens_this_month: int
    running: int
    # Pico-units of billing's currency spent this month, reservations in flight included.
    spent_this_month: int
    # A prepaid account's credit (read with the account's standing); None otherwise.
    credit: Credit | None = None

    @classmethod
    def from_peek(cls, level: Sequence[Any]) -> "Standing":
        """One level's six values in limits_peek.lua's reply."""
        requests, tokens, today, month, running, spent = (int(value) for value in level)
        return cls(requests, tokens, today, month, running, spent)


def account_keys(
    account_id: int, now: datetime, currency: str = DEFAULT_CURRENCY
) -> tuple[str, ...]:
    return _level_keys(f"{{a:{account_id}}}", now.date(), currency)


def project_keys(
    account_id: int, project_id: int, now: datetime, currency: str = DEFAULT_CURRENCY
) -> tuple[str, ...]:
    """The project's eight keys, as account_keys(), under its account's hash tag."""
    return _level_keys(f"{{a:{account_id}}}:p:{project_id}", now.date(), currency)


# Every admission names its levels' keys: built once a day per level, not per request.
@functools.lru_cache(maxsize=65_536)
def _level_keys(tag: str, day: date, currency: str) -> tuple[str, ...]:
    return (
        f"{tag}:rpm",
        f"{tag}:tpm",
        f"{tag}:tpm:amounts",
        f"{tag}:tpm:sum",
        f"{tag}:tpd:{day:%Y%m%d}",
        f"{tag}:tpmo:{day:%Y%m}",
        f"{tag}:concurrent",
        f"{tag}:spend-pico:{day:%Y%m}:{currency}",
    )


def prepaid_keys(account_id: int) -> tuple[str, str]:
    """A prepaid account's credit balance and the hash of what is held from it for each
    request in flight, under the account's hash tag."""
    balance, _ = credit_keys(account_id)
    return balance, credit_held_key(account_id)


def credit_parse(reply: Sequence[Any]) -> Credit:
    """The credit part of limits_peek.lua's reply: the balance ('' where missing: None, for
    the caller to read as 0 while Redis holds the credit counters, CREDIT_EPOCH), then what
    is held for each request in flight, added up here exactly."""
    balance, *held = reply
    return Credit(
        None if balance in (b"", "") else int(balance), sum(int(amount) for amount in held)
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
    def __init__(
        self,
        client: aioredis.Redis,
        batcher: ScriptBatcher,
        *,
        lease_seconds: float,
        currency: str = DEFAULT_CURRENCY,
    ) -> None:
        self.client = client
        # What accounts without a budget are priced in (their spend counters' currency).
        self.currency = currency
        self.lease_ms = int(lease_seconds * 1000)
        # request_id -> its concurrency slot keys (the account's, the project's where it
        # counts them), for lease renewal.
        self.live: dict[str, tuple[str, ...]] = {}
        self._batcher = batcher

    async def admit(
        self,
        *,
        account_id: int,
        request_id: str,
        reserve: int,
        limits: Limits,
        now: datetime,
        spend: Spend = Spend(),
        project_id: int | None = None,
        project_limits: Limits = Limits(),
        prepaid: bool = False,
    ) -> Admission:
        """Check and count the request at its account and, with `project_id`, at its project
        too, and for a `prepaid` account against its credit balance, in one Lua call."""
        keys = account_keys(account_id, now, spend.currency)
        project: tuple[Any, ...] = ()
        if project_id is not None:
            keys += project_keys(account_id, project_id, now, spend.currency)
            project = (
                _limit(project_limits.requests_per_minute),
                _limit(project_limits.tokens_per_minute),
                _limit(project_limits.tokens_per_day),
                _limit(project_limits.tokens_per_month),
                _limit(project_limits.max_concurrent_requests),
                _limit(spend.project_cap),
            )
        if prepaid:
            keys += prepaid_keys(account_id)
        day_left, month_left = period_ends(now)
        reply = await self._batcher.call(
            _ADMIT,
            keys,
            (
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
                min(spend.reserve, REQUEST_MOST),
                _limit(spend.cap),
                SPEND_CEILING,
                *project,
            ),
        )
        admitted, reason, retry_after, requests, requests_reset, tokens, tokens_reset = reply[:7]
        balance = None if reply[15] in (b"", "") else int(reply[15])
        reason = _text(reason)
        if reason == "credit" and balance is None and not await self.client.exists(CREDIT_EPOCH):
            # Not "no credit": Redis lost the counters and billing has not rebuilt them yet.
            reason = "credit_unknown"
        if admitted:
            slots: tuple[str, ...] = (keys[_SLOTS],)
            if project and project_limits.max_concurrent_requests is not None:
                slots += (keys[8 + _SLOTS],)
            self.live[request_id] = slots
        return Admission(
            admitted=bool(admitted),
            reason=reason,
            retry_after_ms=int(retry_after),
            requests_used=int(requests),
            requests_reset_ms=int(requests_reset),
            tokens_used=int(tokens),
            tokens_reset_ms=int(tokens_reset),
            keys=keys,
            reserved=reserve,
            spend_reserved=int(reply[7]),
            level=_text(reply[8]),
            project_requests_used=int(reply[9]),
            project_requests_reset_ms=int(reply[10]),
            project_tokens_used=int(reply[11]),
            project_tokens_reset_ms=int(reply[12]),
            project_spend_reserved=int(reply[13]),
            prepaid=prepaid,
            credit_reserved=int(reply[14]),
            balance=balance,
        )

    async def peek(
        self,
        *,
        account_id: int,
        now: datetime,
        currency: str = DEFAULT_CURRENCY,
        prepaid: bool = False,
    ) -> Standing:
        """Where the account stands now, without counting anything."""
        keys = account_keys(account_id, now, currency)
        if prepaid:
            keys += prepaid_keys(account_id)
        # Through the batcher, after any settle still lingering there: an account reads its
        # own refunds.
        reply = await self._batcher.call(_PEEK, keys, (int(now.timestamp() * 1000),))
        return (await self._standings(reply, levels=1, prepaid=prepaid))[0]

    async def standings(
        self,
        *,
        account_id: int,
        project_id: int,
        now: datetime,
        currency: str = DEFAULT_CURRENCY,
        prepaid: bool = False,
    ) -> tuple[Standing, Standing]:
        """Where the account and its project stand now, in one call, counting nothing. The
        project's windows and slots count only while it has a limit on them; a prepaid
        account's credit is the account's."""
        keys = account_keys(account_id, now, currency)
        keys += project_keys(account_id, project_id, now, currency)
        if prepaid:
            keys += prepaid_keys(account_id)
        reply = await self._batcher.call(_PEEK, keys, (int(now.timestamp() * 1000),))
        account, project = await self._standings(reply, levels=2, prepaid=prepaid)
        return account, project

    async def _standings(self, reply: list[Any], *, levels: int, prepaid: bool) -> list[Standing]:
        """limits_peek.lua's reply, one Standing per level, the credit with the first."""
        standings = [Standing.from_peek(reply[i : i + 6]) for i in range(0, 6 * levels, 6)]
        if prepaid:
            credit = credit_parse(reply[6 * levels :])
            if credit.balance is None and await self.client.exists(CREDIT_EPOCH):
                credit = replace(credit, balance=0)
            standings[0] = replace(standings[0], credit=credit)
        return standings

    def settle(self, admission: Admission, *, request_id: str, used: int, spent: int = 0) -> None:
        """Swap the reservations for the tokens used and what they cost (pico-units), give a
        prepaid balance back what the request did not cost, and free the slot, in the
        background."""
        self.live.pop(request_id, None)
        cost = min(spent, REQUEST_MOST)
        money = cost - admission.spend_reserved
        args: tuple[Any, ...] = (request_id, admission.reserved, used, money, SPEND_CEILING)
        project = len(admission.keys) - (2 if admission.prepaid else 0) > _LEVEL_KEYS
        if project or admission.prepaid:
            # The project's difference (0 without a project level), then a prepaid balance's
            # cost: limits_settle.lua's ARGV[6] and ARGV[7].
            args += (cost - admission.project_spend_reserved if project else 0,)
        if admission.prepaid:
            args += (cost,)
        self._batcher.call(_SETTLE, admission.keys, args, linger=True).add_done_callback(
            _check_settled
        )

    async def rebuild_if_empty(self, pool: AsyncConnectionPool) -> bool:
        """Restore the day and month quota counters and the month's spend, of accounts and of
        their projects, from the ledger if Redis came back empty.

        Redis is the only home of the counters; after a restart without persistence or a
        failover to an empty replica they would start from zero and let spent quotas be spent
        again. The epoch keys mark a Redis that has its counters; one gateway rebuilds at a
        time. A request admitted just after the restart and stored before the rebuild reads
        the ledger is counted twice: the error is on the safe side and lasts one period.
        The spend and the projects' counters have epochs of their own: counters kept in
        micro-units (before the spend's) are under other names, and projects' counters are
        newer than accounts', so the first gateway that finds only one of them missing
        rebuilds that part alone (adding to counters still there would count them twice).
        """
        epochs = (_EPOCH, _SPEND_EPOCH, _PROJECT_EPOCH)
        if all(await self.client.mget(*epochs)):
            return False
        if not await self.client.set(_REBUILDING, "1", nx=True, ex=60):
            return False
        try:
            # Again under the lock: another gateway may have rebuilt since.
            tokens_kept, spend_kept, projects_kept = await self.client.mget(*epochs)
            if tokens_kept and spend_kept and projects_kept:
                return False
            now = datetime.now(UTC)
            today = now.replace(hour=0, minute=0, second=0, microsecond=0)
            month = today.replace(day=1)
            async with pool.connection(timeout=5.0) as conn:
                totals = (
                    []
                    if tokens_kept and projects_kept
                    else await period_totals(conn, today=today, month=month)
                )
                spends = (
                    []
                    if spend_kept and projects_kept
                    else await month_spend_by_project(conn, month=month, currency=self.currency)
                )
            pipe = self.client.pipeline(transaction=False)
            counters = _Counters(pipe, now)
            if not tokens_kept:
                for account_id, (day_tokens, month_tokens) in _by_account(totals).items():
                    counters.tokens(account_keys(account_id, now), day_tokens, month_tokens)
            if not spend_kept:
                for account_id, (spent,) in _by_account(spends).items():
                    counters.spend(account_keys(account_id, now, self.currency), spent)
            if not projects_kept:
                for account_id, project_id, day_tokens, month_tokens in totals:
                    if project_id is not None:
                        keys = project_keys(account_id, project_id, now)
                        counters.tokens(keys, day_tokens, month_tokens)
                for account_id, project_id, spent in spends:
                    if project_id is not None:
                        keys = project_keys(account_id, project_id, now, self.currency)
                        counters.spend(keys, spent)
            for epoch in epochs:
                pipe.set(epoch, now.isoformat())
            await pipe.execute()
        finally:
            await self.client.delete(_REBUILDING)
        log.warning(
            "quota counters rebuilt from the ledger",
            extra={"token_rows": len(totals), "spend_rows": len(spends)},
        )
        return True

    async def renew(self) -> None:
        """Extend the concurrency leases of this process's live requests (long streams)."""
        if not self.live:
            return
        expiry = int(time.time() * 1000) + self.lease_ms
        pipe = self.client.pipeline(transaction=False)
        for request_id, slot_keys in self.live.items():
            for slot_key in slot_keys:
                pipe.zadd(slot_key, {request_id: expiry}, xx=True)
        await pipe.execute()


def _check_settled(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        # The reservation stays counted until its window passes; the slot's lease lapses.
        log.error("could not settle a request's limits", exc_info=exc)


def _limit(value: int | None) -> int:
    return UNLIMITED if value is None else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _by_account(rows: Iterable[Sequence[Any]]) -> dict[int, list[int]]:
    """Rows of (account, project, amounts...) summed per account, projects together."""
    sums: dict[int, list[int]] = {}
    for account_id, _, *amounts in rows:
        total = sums.setdefault(account_id, [0] * len(amounts))
        for i, amount in enumerate(amounts):
            total[i] += amount
    return sums


class _Counters:
    """Adds the ledger's totals to period counters, in a pipeline (Limiter.rebuild_if_empty)."""

    def __init__(self, pipe: Any, now: datetime) -> None:
        self.pipe = pipe
        self.day_left, self.month_left = period_ends(now)

    def tokens(self, keys: tuple[str, ...], day: int, month: int) -> None:
        self.pipe.incrby(keys[_DAY], day)
        self.pipe.expire(keys[_DAY], self.day_left + 3600)
        self.pipe.incrby(keys[_MONTH], month)
        self.pipe.expire(keys[_MONTH], self.month_left + 3600)

    def spend(self, keys: tuple[str, ...], spent: int) -> None:
        self.pipe.incrby(keys[_SPEND], min(spent, SPEND_CEILING))
        self.pipe.expire(keys[_SPEND], self.month_left + 3600)
