"""The usage rollups: the ledger summed per hour and per day, rated and costed (docs/billing.md).

Incremental (billing.tasks.rollup_usage, every few minutes): each run rebuilds the hours that
changed since the last one and no others: the complete hours since the last run, and every
earlier hour that records reached the ledger for (by `stored_at`, late ones included), whose
records were corrected (`revised_at`) or got energy from intervals attributed since (by
`attributed_at`). Every hour holds the records stored by the rollups' arrivals watermark, no
more: the month's close runs the rollups to its own cutoff and reads its invoices from them.
Rebuilt on demand over any hours (a correction: a cost model back-dated, a price book fixed).
"""

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Min
from django.utils import timezone

from billing.jobs import (
    DAY,
    HOUR,
    Window,
    day_start,
    hour_start,
    job_settings,
    job_start,
    watermark,
    watermark_set,
)
from billing.models import CostModel, JobRun, UsageRollup
from billing.rating import FEE_EXEMPT
from billing.selectors import billing_currency
from metering.models import EnergyInterval
from metering.services import arrivals_cutoff, attributions_cutoff

ROLLUPS_LOCK = "billing.rollups"
_ANALYZE_AFTER_DAYS = 7
_SQL = Path(__file__).parent / "sql"
_ROLLUP_HOURS = (_SQL / "rollup_hours.sql").read_text()
_ROLLUP_DAYS = (_SQL / "rollup_days.sql").read_text()
_TOUCHED_HOURS = (_SQL / "rollup_touched.sql").read_text()
_FIRST_USAGE = "SELECT min(started_at) FROM metering_usagerecord"
# Per backend, the span of the energy intervals attributed in (after, by] before `before`.
_ATTRIBUTED = (
    "SELECT backend, min(started_at), max(ended_at) FROM metering_energyinterval "
    "WHERE attributed_at > %s AND attributed_at <= %s AND started_at < %s GROUP BY backend"
)


def rollups_run(*, now: datetime | None = None, wait: bool = False) -> Window | None:
    """Bring the rollups up to date: the complete hours since the last run, and every earlier
    hour whose records changed since (arrived late: a spool replayed after an outage, a reaped
    lease; corrected; given energy), so the margins and the report count them without anyone
    rebuilding by hand.

    Returns the hours rolled up since the watermark; None when another run holds the lock
    (unless `wait`) or there is nothing to roll up yet.
    """
    until = hour_start(now or timezone.now())
    arrived_by, attributed_by = arrivals_cutoff(), attributions_cutoff()
    in_parallel = not connection.in_atomic_block
    with transaction.atomic():
        if not job_start(ROLLUPS_LOCK, wait=wait):
            return None
        return rollups_catch_up(
            until=until,
            arrived_by=arrived_by,
            attributed_by=attributed_by,
            in_parallel=in_parallel,
        )


def rollups_catch_up(
    *, until: datetime, arrived_by: datetime, attributed_by: datetime, in_parallel: bool = False
) -> Window | None:
    """rollups_run's work, for a caller that holds the rollups' lock (job_start(ROLLUPS_LOCK))
    in its transaction and took the cutoffs (metering.services.arrivals_cutoff,
    attributions_cutoff) before it: the month's close. Afterwards every hour before
    max(until, the last run's) holds exactly the records stored by rollups_arrived().

    `in_parallel`: the first run's days are rebuilt by other connections, each committing its
    own (days_rebuild); the caller's transaction must hold nothing they need to see."""
    rolled, after = watermark("rollups"), watermark("rollups.arrivals")
    if rolled is None or after is None:  # the first run: every hour there is
        since = _first_hour()
        if since is None or since >= until:
            return None
        window = Window(since, until)
        if in_parallel:
            days_rebuild(window, arrived_by=arrived_by)
        else:
            buckets_rebuild([window], arrived_by=arrived_by)
    else:
        arrived_by = max(arrived_by, after)
        attributed_after = watermark("rollups.attributions") or after
        attributed_by = max(attributed_by, attributed_after)
        touched = _touched_hours(
            after, arrived_by, attributed_after, attributed_by, before=min(rolled, until)
        )
        if touched:
            _margins_redo_from(touched[0].since)
        window = Window(rolled, max(rolled, until))
        if rolled < until:
            touched.append(window)
        buckets_rebuild(touched, arrived_by=arrived_by)
    watermark_set("rollups", window.until)
    watermark_set("rollups.arrivals", arrived_by)
    watermark_set("rollups.attributions", attributed_by)
    return window


def rollups_arrived() -> datetime | None:
    """The rollups' arrivals watermark: the records stored by then are in them, none later."""
    return watermark("rollups.arrivals")


def _touched_hours(
    arrived_after: datetime,
    arrived_by: datetime,
    attributed_after: datetime,
    attributed_by: datetime,
    *,
    before: datetime,
) -> list[Window]:
    """The hours before `before` whose records changed since the last run (rollup_touched.sql),
    as runs of consecutive hours."""
    max_lag = timedelta(seconds=settings.METERING.attribution_max_lag_seconds)
    with connection.cursor() as cursor:
        cursor.execute(_ATTRIBUTED, [attributed_after, attributed_by, before])
        spans = cursor.fetchall()
        params: dict[str, Any] = {
            "arrived_after": arrived_after,
            "arrived_by": arrived_by,
            "before": before,
            "max_lag": max_lag,
            "backends": [backend for backend, _, _ in spans],
            "firsts": [first for _, first, _ in spans],
            "lasts": [last for _, _, last in spans],
            "lower": min((first for _, first, _ in spans), default=before) - max_lag,
            "upper": min(max((last for _, _, last in spans), default=before), before),
        }
        cursor.execute(_TOUCHED_HOURS, params)
        return _runs([row[0] for row in cursor.fetchall()], HOUR)


def _runs(buckets: list[datetime], size: timedelta) -> list[Window]:
    """Ordered buckets of one size as runs of consecutive ones."""
    runs: list[Window] = []
    for bucket in buckets:
        if runs and runs[-1].until == bucket:
            runs[-1] = Window(runs[-1].since, bucket + size)
        else:
            runs.append(Window(bucket, bucket + size))
    return runs


def _margins_redo_from(since: datetime) -> None:
    """The margins from `since` on are stale: the next margins run starts from there."""
    JobRun.objects.filter(job="margins", watermark__gt=since).update(watermark=since)


def rollups_rebuild(*, since: datetime, until: datetime) -> Window:
    """Rebuild the rollups of the hours [since, until) whatever the watermark, with the
    records stored by the rollups' arrivals watermark (all stored by now before the first
    run): a correction (a cost model back-dated, a price book fixed) counts once this has run.

    Outside a transaction, a few days at a time on BILLING_REBUILD_WORKERS connections, each
    committed: a rebuild cut short leaves every hour either rebuilt or as it was (each holds
    the records stored by the same watermark), and is finished by running it again."""
    window = Window(hour_start(since), hour_start(until + HOUR - timedelta(microseconds=1)))
    arrived_now = arrivals_cutoff()
    in_parallel = not connection.in_atomic_block
    with transaction.atomic():
        job_start(ROLLUPS_LOCK, wait=True)
        arrived_by = rollups_arrived() or arrived_now
        if in_parallel:
            days_rebuild(window, arrived_by=arrived_by)
        else:
            buckets_rebuild([window], arrived_by=arrived_by)
        _margins_redo_from(window.since)
    return window


def days_rebuild(window: Window, *, arrived_by: datetime) -> None:
    """buckets_rebuild of `window` in pieces of whole days, BILLING_REBUILD_WORKERS at a time,
    each on a connection of its own and committed there (PostgreSQL runs no INSERT ... SELECT
    with parallel workers). The caller holds the rollups' lock, so no run interleaves."""
    first, last = day_start(window.since), day_start(window.until - timedelta(microseconds=1))
    days = (last - first) // DAY + 1
    workers = settings.BILLING.rebuild_workers
    size = max(1, -(-days // (workers * 4)))  # a few pieces a worker: they even out
    pieces = [
        Window(max(window.since, first + DAY * n), min(window.until, first + DAY * (n + size)))
        for n in range(0, days, size)
    ]

    def piece_rebuild(piece: Window) -> None:
        try:
            with transaction.atomic():
                job_settings()
                buckets_rebuild([piece], arrived_by=arrived_by)
        finally:
            connection.close()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(piece_rebuild, pieces))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_usagerollup")


def buckets_rebuild(hours: list[Window], *, arrived_by: datetime) -> None:
    """Rebuild the runs of `hours` (in order, apart), with the records stored by `arrived_by`,
    then their days: a day all of whose hours were rebuilt whole, another only for the accounts
    whose hours were (the rest of its rows are sums of hours that did not change). A run's
    `until` may fall inside an hour.

    The caller holds the rollups' lock (job_start(ROLLUPS_LOCK)) in this transaction.
    """
    params: dict[str, Any] = {
        "arrived_by": arrived_by,
        "currency": billing_currency(),
        "fee_exempt": FEE_EXEMPT,
    }
    accounts: set[int] = set()
    with connection.cursor() as cursor:
        for run in hours:
            rows = UsageRollup.objects.filter(
                grain="hour", bucket__gte=run.since, bucket__lt=run.until
            )
            whole_days = all(_days([run]).values())
            if not whole_days:
                accounts.update(rows.values_list("account_id", flat=True).distinct())
            rows.delete()
            cursor.execute(_ROLLUP_HOURS, {**params, "since": run.since, "until": run.until})
            if not whole_days:
                accounts.update(rows.values_list("account_id", flat=True).distinct())
        days = _days(hours)
        for run in _runs(sorted(day for day, whole in days.items() if whole), DAY):
            UsageRollup.objects.filter(
                grain="day", bucket__gte=run.since, bucket__lt=run.until
            ).delete()
            cursor.execute(_ROLLUP_DAYS, {"since": run.since, "until": run.until, "accounts": None})
        for day in sorted(day for day, whole in days.items() if not whole):
            UsageRollup.objects.filter(grain="day", bucket=day, account_id__in=accounts).delete()
            cursor.execute(
                _ROLLUP_DAYS, {"since": day, "until": day + DAY, "accounts": sorted(accounts)}
            )
        if sum(days.values()) >= _ANALYZE_AFTER_DAYS:
            # Days of rows written at once: the planner's statistics of the table would be
            # off until autovacuum came by, and the close's plans with them (10 s, not 3).
            cursor.execute("ANALYZE billing_usagerollup")


def _days(hours: list[Window]) -> dict[datetime, bool]:
    """The UTC days the runs of hours touch, and whether all of a day's hours are among them."""
    days: dict[datetime, bool] = {}
    for run in hours:
        day = day_start(run.since)
        while day < run.until:
            days[day] = days.get(day, False) or (run.since <= day and day + DAY <= run.until)
            day += DAY
    return days


def _first_hour() -> datetime | None:
    """Where rollups begin: the first usage, energy interval or cost model, whichever first."""
    with connection.cursor() as cursor:
        cursor.execute(_FIRST_USAGE)
        starts = [cursor.fetchone()[0]]
    starts.append(EnergyInterval.objects.aggregate(first=Min("started_at"))["first"])
    starts.append(CostModel.objects.aggregate(first=Min("effective_from"))["first"])
    known = [start for start in starts if start is not None]
    return hour_start(min(known)) if known else None
