"""Writes to the usage ledger."""

from collections.abc import Sequence
from datetime import date
from typing import Any

from django.db import connection, transaction

from metering.events import COLUMNS

_COLUMN_LIST = ", ".join(COLUMNS)


def usage_records_write(*, records: Sequence[dict[str, Any]]) -> int:
    """Insert records, skipping any already stored; returns how many were new.

    COPY into a temporary table then one INSERT … ON CONFLICT DO NOTHING: the fastest
    idempotent bulk path PostgreSQL has, so a replayed batch never doubles a record.
    """
    if not records:
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS usage_incoming "
            "(LIKE metering_usagerecord INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.copy(f"COPY usage_incoming ({_COLUMN_LIST}) FROM STDIN") as copy:
            for record in records:
                copy.write_row([record[column] for column in COLUMNS])
        cursor.execute(
            f"INSERT INTO metering_usagerecord ({_COLUMN_LIST}) "  # noqa: S608 (constant columns)
            f"SELECT {_COLUMN_LIST} FROM usage_incoming ON CONFLICT DO NOTHING"
        )
        return int(cursor.rowcount)


def usage_partitions_ensure(*, today: date, months_ahead: int = 3) -> list[str]:
    """Create the monthly partitions from this month to `months_ahead` ahead; returns names.

    Run ahead of time (Celery beat, hourly): rows for a month without its partition land in
    the DEFAULT partition, and PostgreSQL refuses to create a partition whose rows are there.
    """
    created = []
    year, month = today.year, today.month
    with connection.cursor() as cursor:
        for _ in range(months_ahead + 1):
            next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
            name = f"metering_usagerecord_y{year:04d}m{month:02d}"
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF metering_usagerecord "
                f"FOR VALUES FROM ('{year:04d}-{month:02d}-01') "
                f"TO ('{next_year:04d}-{next_month:02d}-01')"
            )
            created.append(name)
            year, month = next_year, next_month
    return created
