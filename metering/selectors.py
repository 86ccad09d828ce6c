"""Reads of the usage ledger.

The gateway's are async, on a psycopg connection it owns; reports' (energy) are sync, on
Django's connection.
"""

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from django.db import connection
from psycopg import AsyncConnection

from metering.events import request_ref

_SQL = Path(__file__).parent / "sql"
_TOTALS = (_SQL / "account_usage.sql").read_text()
_RECENT = (_SQL / "account_recent.sql").read_text()
_PERIOD_TOTALS = (_SQL / "period_totals.sql").read_text()
_ENERGY_EFFICIENCY = (_SQL / "energy_efficiency.sql").read_text()
_ENERGY_IDLE = (_SQL / "energy_idle.sql").read_text()
_TOTAL_FIELDS = (
    "requests",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
)


async def usage_totals(
    conn: AsyncConnection[Any], *, account_id: int, since: datetime, project_id: int | None = None
) -> dict[str, int]:
    """The account's usage since `since`: of all its projects, or of `project_id`'s."""
    params = {"account_id": account_id, "since": since, "project_id": project_id}
    cursor = await conn.execute(_TOTALS, params)
    row = await cursor.fetchone()
    assert row is not None
    return dict(zip(_TOTAL_FIELDS, (int(value) for value in row), strict=True))


async def usage_recent(
    conn: AsyncConnection[Any], *, account_id: int, since: datetime, limit: int
) -> list[dict[str, Any]]:
    params = {"account_id": account_id, "since": since, "limit": limit}
    cursor = await conn.execute(_RECENT, params)
    return [
        {
            "request_id": request_ref(row[0]),
            "created": int(row[1].timestamp()),
            "model": row[2],
            "endpoint": row[3],
            "prompt_tokens": row[4],
            "cached_prompt_tokens": row[5],
            "completion_tokens": row[6],
            "reasoning_tokens": row[7],
            "tokens_estimated": row[8],
            "outcome": row[9],
            "latency_ms": round(row[10], 1),
        }
        for row in await cursor.fetchall()
    ]


async def period_totals(
    conn: AsyncConnection[Any], *, today: datetime, month: datetime
) -> list[tuple[int, int | None, int, int]]:
    """(account_id, project_id, tokens today, tokens this month) for every project with usage
    this month; project_id None for usage of keys deleted before projects existed."""
    cursor = await conn.execute(_PERIOD_TOTALS, {"today": today, "month": month})
    return [(int(a), p, int(d), int(m)) for a, p, d, m in await cursor.fetchall()]


@dataclass(frozen=True, slots=True)
class EnergyEfficiency:
    """Requests of one hour, backend, model and tier that have their energy (docs/energy.md).

    Tokens are prompt + completion tokens, what a request is billed for.
    """

    hour: datetime
    backend: str
    model: str
    tier: str
    requests: int
    # Records that did work but have no energy yet: attribution pending, or no telemetry.
    unattributed: int
    prompt_tokens: int
    completion_tokens: int
    energy_j: float

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def tokens_per_joule(self) -> float | None:
        return self.tokens / self.energy_j if self.energy_j > 0 else None

    @property
    def joules_per_token(self) -> float | None:
        return self.energy_j / self.tokens if self.tokens > 0 else None

    @property
    def output_tokens_per_joule(self) -> float | None:
        return self.completion_tokens / self.energy_j if self.energy_j > 0 else None


@dataclass(frozen=True, slots=True)
class EnergyIdle:
    """One backend's measured energy in one hour: attributed + idle + pending = measured."""

    hour: datetime
    backend: str
    intervals: int
    measured_j: float
    attributed_j: float
    idle_j: float
    pending_j: float
    # Intervals whose energy is a lower bound (a counter restarted inside them).
    counter_resets: int

    @property
    def idle_share(self) -> float | None:
        done = self.attributed_j + self.idle_j
        return self.idle_j / done if done > 0 else None


def energy_efficiency(*, since: datetime, until: datetime) -> list[EnergyEfficiency]:
    """Tokens per joule by hour (UTC), backend, model and tier, for requests started in
    [since, until); a request's energy counts in the hour it started."""
    with connection.cursor() as cursor:
        cursor.execute(_ENERGY_EFFICIENCY, {"since": since, "until": until})
        return [
            EnergyEfficiency(
                hour=row[0],
                backend=row[1],
                model=row[2],
                tier=row[3],
                requests=int(row[4]),
                unattributed=int(row[5]),
                prompt_tokens=int(row[6]),
                completion_tokens=int(row[7]),
                energy_j=float(row[8]),
            )
            for row in cursor.fetchall()
        ]


def energy_idle(*, since: datetime, until: datetime) -> list[EnergyIdle]:
    """Measured, attributed, idle and pending energy by hour (UTC) and backend, for the
    intervals that started in [since, until)."""
    with connection.cursor() as cursor:
        cursor.execute(_ENERGY_IDLE, {"since": since, "until": until})
        return [
            EnergyIdle(
                hour=row[0],
                backend=row[1],
                intervals=int(row[2]),
                measured_j=float(row[3]),
                attributed_j=float(row[4]),
                idle_j=float(row[5]),
                pending_j=float(row[6]),
                counter_resets=int(row[7]),
            )
            for row in cursor.fetchall()
        ]
