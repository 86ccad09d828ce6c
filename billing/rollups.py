"""The usage rollups: the ledger summed per hour and per day, rated and costed (docs/billing.md).

Run by the beat every few minutes (billing.tasks.rollup_usage): whole hours since the last
run, a grace window back (billing/jobs.py), and any earlier hour whose usage arrived since
the last run (by the ledger's `stored_at`). Rebuilt on demand over any hours.
"""

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.db.models import Min
from django.utils import timezone

from billing.jobs import (
    DAY,
    HOUR,
    Window,
    day_start,
    grace,
    hour_start,
    job_start,
    watermark,
    watermark_set,
)
from billing.models import CostModel, JobRun, UsageRollup
from billing.rating import FEE_EXEMPT
from billing.selectors import billing_currency
from metering.models import EnergyInterval
from metering.services import arrivals_cutoff

_SQL = Path(__file__).parent / "sql"
_ROLLUP_HOURS = (_SQL / "rollup_hours.sql").read_text()
_ROLLUP_DAYS = (_SQL / "rollup_days.sql").read_text()
_FIRST_USAGE = "SELECT min(started_at) FROM metering_usagerecord"
_LATE_HOURS = (
    "SELECT DISTINCT date_trunc('hour', started_at, 'UTC') FROM metering_usagerecord "
    "WHERE stored_at > %(after)s AND stored_at <= %(arrived_by)s AND started_at < %(before)s "
    "ORDER BY 1"
)


def rollups_run(*, now: datetime | None = None, wait: bool = False) -> Window | None:
    """Roll up the ledger's complete hours since the last run, a grace window back, and every
    earlier hour that records reached the ledger for since the last run (usage that arrived
    late: a spool replayed after an outage, a reaped lease), so the margins and the report
    count it without anyone rebuilding by hand.

    Returns the hours rebuilt since the watermark; None when another run holds the lock
    (unless `wait`) or there is nothing to roll up yet.
    """
    until = hour_start(now or timezone.now())
    arrived_by = arrivals_cutoff()
    with transaction.atomic():
        if not job_start("billing.rollups", wait=wait):
            return None
        rolled = watermark("rollups")
        since = hour_start(rolled - grace()) if rolled else _first_hour()
        if since is None or since >= until:
            return None
        arrived_after = watermark("rollups.arrivals")
        if arrived_after is not None:
            for late in _late_hours(arrived_after, arrived_by, before=since):
                buckets_rebuild(late.since, late.until)
                _margins_redo_from(late.since)
        buckets_rebuild(since, until)
        watermark_set("rollups", until)
        watermark_set("rollups.arrivals", arrived_by)
    return Window(since, until)


def _late_hours(after: datetime, arrived_by: datetime, *, before: datetime) -> list[Window]:
    """The hours before `before` that records reached the ledger for in (after, arrived_by],
    as runs of consecutive hours."""
    with connection.cursor() as cursor:
        cursor.execute(_LATE_HOURS, {"after": after, "arrived_by": arrived_by, "before": before})
        hours = [row[0] for row in cursor.fetchall()]
    runs: list[Window] = []
    for hour in hours:
        if runs and runs[-1].until == hour:
            runs[-1] = Window(runs[-1].since, hour + HOUR)
        else:
            runs.append(Window(hour, hour + HOUR))
    return runs


def _margins_redo_from(since: datetime) -> None:
    """The margins from `since` on are stale: the next margins run starts from there."""
    JobRun.objects.filter(job="margins", watermark__gt=since).update(watermark=since)


def rollups_rebuild(*, since: datetime, until: datetime) -> Window:
    """Rebuild the rollups of the hours [since, until) whatever the watermark: usage that
    arrived after its grace window (a long outage's spool) is counted once this has run."""
    window = Window(hour_start(since), hour_start(until + HOUR - timedelta(microseconds=1)))
    with transaction.atomic():
        job_start("billing.rollups", wait=True)
        buckets_rebuild(window.since, window.until)
        _margins_redo_from(window.since)
    return window


def buckets_rebuild(since: datetime, until: datetime) -> None:
    """Rebuild the hours [since, until) and their days; `until` may fall inside an hour.

    The caller holds the rollups' lock (job_start("billing.rollups")) in this transaction.
    """
    days_since, days_until = day_start(since), day_start(until - timedelta(microseconds=1)) + DAY
    hours = UsageRollup.objects.filter(grain=UsageRollup.Grain.HOUR)
    hours.filter(bucket__gte=since, bucket__lt=until).delete()
    days = UsageRollup.objects.filter(grain=UsageRollup.Grain.DAY)
    days.filter(bucket__gte=days_since, bucket__lt=days_until).delete()
    with connection.cursor() as cursor:
        params: dict[str, Any] = {
            "since": since,
            "until": until,
            "currency": billing_currency(),
            "fee_exempt": FEE_EXEMPT,
        }
        cursor.execute(_ROLLUP_HOURS, params)
        cursor.execute(_ROLLUP_DAYS, {"since": days_since, "until": days_until})


def _first_hour() -> datetime | None:
    """Where rollups begin: the first usage, energy interval or cost model, whichever first."""
    with connection.cursor() as cursor:
        cursor.execute(_FIRST_USAGE)
        starts = [cursor.fetchone()[0]]
    starts.append(EnergyInterval.objects.aggregate(first=Min("started_at"))["first"])
    starts.append(CostModel.objects.aggregate(first=Min("effective_from"))["first"])
    known = [start for start in starts if start is not None]
    return hour_start(min(known)) if known else None
