"""Writes to the usage ledger."""

import logging
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import psycopg
from django.db import DataError, IntegrityError, connection, transaction
from psycopg import AsyncConnection

from audit.services import AnyRequest, audit_record, object_type, snapshot
from metering.events import STORED_COLUMNS, record_from_event, record_row
from metering.models import QuarantinedEvent

log = logging.getLogger(__name__)

_COLUMN_LIST = ", ".join(STORED_COLUMNS)
# The columns as inserted from the incoming table: a record without its project (from a gateway
# older than projects) takes its key's, which never changes; null if the key is gone.
_SELECTED = ", ".join(
    "coalesce(incoming.project_id, "
    "(SELECT k.project_id FROM customers_apikey k WHERE k.id = incoming.api_key_id))"
    if column == "project_id"
    else column
    for column in STORED_COLUMNS
)
_CORRECTED = ", ".join(
    f"{column} = EXCLUDED.{column}" for column in STORED_COLUMNS if column != "energy_joules"
)


def usage_insert_sql(source: str) -> str:
    """INSERT the records of the temporary table `source` into the ledger, idempotently.

    A record already stored is left alone, except a `gateway_lost` guess (what the reaper knew
    of a request whose gateway stopped renewing its lease): the request's final record, when
    its gateway comes back, replaces it, so the ledger ends with what the client received.
    """
    return (
        f"INSERT INTO metering_usagerecord ({_COLUMN_LIST}) "  # noqa: S608 (constant names)
        f"SELECT {_SELECTED} FROM {source} AS incoming "
        f"ON CONFLICT (request_id, started_at) DO UPDATE SET {_CORRECTED}, "
        "revised_at = clock_timestamp() "
        "WHERE metering_usagerecord.outcome = 'gateway_lost' AND EXCLUDED.outcome <> 'gateway_lost'"
    )


_DEFAULT = "metering_usagerecord_default"


def arrivals_cutoff() -> datetime:
    """An instant that splits the ledger's arrivals cleanly: every record stored (or corrected)
    at or before it (`stored_at`, `revised_at`) is committed and visible to any statement run
    after this returns, and every record stored later gets a later stamp.

    It waits for the writers in progress to commit (a SHARE lock conflicts with their ROW
    EXCLUSIVE one) and reads the clock while new writers wait; a writer then reads
    `clock_timestamp()` for its rows after the lock is released. Held for milliseconds when
    called outside a transaction, as billing's close and rollups do; inside one, until it ends.
    """
    return _writes_cutoff("metering_usagerecord")


def attributions_cutoff() -> datetime:
    """The same clean split for energy attribution (`EnergyInterval.attributed_at`, stamped
    with the database's clock): every interval attributed at or before it, and the energy it
    added to the usage records, is committed and visible after this returns."""
    return _writes_cutoff("metering_energyinterval")


def _writes_cutoff(table: str) -> datetime:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
        cursor.execute("SELECT clock_timestamp()")
        cutoff: datetime = cursor.fetchone()[0]
    return cutoff


def usage_records_unique(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per request: ON CONFLICT cannot touch a row twice in one INSERT. The first
    copy wins, except that a final record wins over a `gateway_lost` guess."""
    chosen: dict[tuple[Any, Any], dict[str, Any]] = {}
    for record in records:
        key = (record["request_id"], record["started_at"])
        kept = chosen.get(key)
        if kept is None or (
            kept["outcome"] == "gateway_lost" and record["outcome"] != "gateway_lost"
        ):
            chosen[key] = record
    return list(chosen.values())


def usage_records_write(*, records: Sequence[dict[str, Any]]) -> int:
    """Insert records, skipping any already stored; returns how many were new or corrected.

    COPY into a temporary table then one INSERT … ON CONFLICT: the fastest idempotent bulk
    path PostgreSQL has, so a replayed batch never doubles a record (usage_insert_sql).
    """
    if not records:
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS usage_incoming "
            "(LIKE metering_usagerecord INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.copy(f"COPY usage_incoming ({_COLUMN_LIST}) FROM STDIN") as copy:
            for record in usage_records_unique(records):
                copy.write_row(record_row(record))
        cursor.execute(usage_insert_sql("usage_incoming"))
        return int(cursor.rowcount)


class ReleaseError(Exception):
    """A quarantined event that cannot be stored as it is; the message says why."""


def quarantined_event_release(
    *, event_id: int, actor: object, request: AnyRequest | None = None
) -> bool:
    """Store a quarantined usage event in the ledger as it was recorded and take it out of
    quarantine, audited (action `release`); False if it was released already.

    As recorded, not corrected: the backend's counts are the only testimony there is, and
    nobody has better ones to put in their place. Staff release what they judge true (a
    long-context model beyond METERING_MAX_PROMPT_TOKENS); what is false stays quarantined and
    is never billed. A released record arrives now, so it is billed on the next invoice (late
    usage); the row lock and the ledger's key store it once, however often it is released.
    """
    with transaction.atomic():
        event = QuarantinedEvent.objects.select_for_update().filter(pk=event_id).first()
        if event is None:
            return False
        fields = {name.encode(): str(value).encode() for name, value in event.fields.items()}
        try:
            record = record_from_event(fields)
        except (KeyError, ValueError, TypeError) as exc:
            raise ReleaseError(f"it cannot be decoded ({type(exc).__name__}: {exc})") from exc
        try:
            with transaction.atomic():
                usage_records_write(records=[record])
        except (DataError, IntegrityError, psycopg.DataError, psycopg.IntegrityError) as exc:
            raise ReleaseError(f"the ledger refuses it ({exc})") from exc
        audit_record(
            actor=actor,
            action="release",
            obj_type=object_type(event),
            obj_id=event.pk,
            before=snapshot(event),
            after=None,
            request=request,
        )
        event.delete()
    log.warning(
        "quarantined usage event %s of request %s released into the ledger",
        event.stream_id,
        event.request_id,
        extra={"stream_id": event.stream_id, "request_id": event.request_id},
    )
    return True


_SPOOLED_INSERT = usage_insert_sql("usage_spooled")


async def usage_store_spooled(conn: AsyncConnection[Any], records: Sequence[dict[str, Any]]) -> int:
    """usage_records_write for the gateway's usage spool (gateway/spool.py), on its own asyncio
    connection, in one transaction; returns how many records were new or corrected."""
    if not records:
        return 0
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS usage_spooled "
            "(LIKE metering_usagerecord INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        async with conn.cursor() as cursor:
            async with cursor.copy(f"COPY usage_spooled ({_COLUMN_LIST}) FROM STDIN") as copy:
                for record in usage_records_unique(records):
                    await copy.write_row(record_row(record))
            await cursor.execute(_SPOOLED_INSERT)
            return int(cursor.rowcount)


def usage_partitions_ensure(*, today: date, months_ahead: int = 3) -> list[str]:
    """Make sure the monthly partitions from this month to `months_ahead` ahead exist.

    Run ahead of time (Celery beat, hourly). Rows of a month that had no partition yet sit in
    the DEFAULT partition, and PostgreSQL refuses to create a partition while they are there,
    so they are moved into the new partition in the same transaction.
    """
    names = []
    year, month = today.year, today.month
    for _ in range(months_ahead + 1):
        next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
        lower, upper = date(year, month, 1), date(next_year, next_month, 1)
        names.append(
            _partition_ensure(f"metering_usagerecord_y{year:04d}m{month:02d}", lower, upper)
        )
        year, month = next_year, next_month
    return names


def _partition_ensure(name: str, lower: date, upper: date) -> str:
    bounds = f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
    in_range = f"started_at >= '{lower.isoformat()}' AND started_at < '{upper.isoformat()}'"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if cursor.fetchone()[0]:
            return name
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {_DEFAULT} WHERE {in_range})")  # noqa: S608
        strays = cursor.fetchone()[0]
        if strays:
            cursor.execute(f"ALTER TABLE metering_usagerecord DETACH PARTITION {_DEFAULT}")
        cursor.execute(f"CREATE TABLE {name} PARTITION OF metering_usagerecord {bounds}")
        if strays:
            cursor.execute(
                f"WITH moved AS (DELETE FROM {_DEFAULT} WHERE {in_range} RETURNING *) "  # noqa: S608
                f"INSERT INTO {name} SELECT * FROM moved"
            )
            cursor.execute(f"ALTER TABLE metering_usagerecord ATTACH PARTITION {_DEFAULT} DEFAULT")
    return name
