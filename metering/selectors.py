"""Reads of the usage ledger. Async, on a psycopg connection the caller owns (the gateway's)."""

from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

_SQL = Path(__file__).parent / "sql"
_TOTALS = (_SQL / "account_usage.sql").read_text()
_RECENT = (_SQL / "account_recent.sql").read_text()
_PERIOD_TOTALS = (_SQL / "period_totals.sql").read_text()
_TOTAL_FIELDS = (
    "requests",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
)


async def usage_totals(
    conn: AsyncConnection[Any], *, account_id: int, since: datetime
) -> dict[str, int]:
    cursor = await conn.execute(_TOTALS, {"account_id": account_id, "since": since})
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
            "request_id": f"req_{row[0].hex}",
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
) -> list[tuple[int, int, int]]:
    """(account_id, tokens today, tokens this month) for every account with usage this month."""
    cursor = await conn.execute(_PERIOD_TOTALS, {"today": today, "month": month})
    return [(int(a), int(d), int(m)) for a, d, m in await cursor.fetchall()]
