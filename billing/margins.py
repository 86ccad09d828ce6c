"""Margins per day and month from the rollups, and the figures at once (docs/billing.md).

Margins follow the rollups' watermark (billing/rollups.py), not the clock; each run rebuilds
whole months in one transaction, under the margins' lock (billing/jobs.py).
"""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.db.models import Min
from django.utils import timezone

from billing.jobs import (
    HOUR,
    Window,
    grace,
    hour_start,
    job_start,
    month_start,
    next_month,
    watermark,
    watermark_set,
)
from billing.models import Margin, UsageRollup
from billing.rollups import ROLLUPS_LOCK, buckets_rebuild, rollups_arrived, rollups_run
from billing.selectors import billing_currency
from billing.services import month_of
from metering.services import arrivals_cutoff

_MARGINS = (Path(__file__).parent / "sql" / "margins.sql").read_text()


def margins_run(*, now: datetime | None = None, wait: bool = False) -> Window | None:
    """Rebuild the margins of the months the rollups changed since the last run.

    Margins follow the rollups' watermark, not the clock: they never get ahead of the usage
    rolled up. Returns the months rebuilt, or None (locked, or no rollups yet).
    """
    with transaction.atomic():
        if not job_start("billing.margins", wait=wait):
            return None
        rolled = watermark("rollups")
        if rolled is None:
            return None
        done = watermark("margins")
        start = done - grace() if done else _first_rollup()
        window = Window(month_start(min(start, rolled - HOUR)), next_month(rolled - HOUR))
        months_rebuild(window)
        watermark_set("margins", rolled)
    return window


def months_rebuild(window: Window) -> None:
    """Rebuild the day and month margins of the whole months [since, until).

    The caller holds the margins' lock (job_start("billing.margins")) in this transaction.
    """
    Margin.objects.filter(
        grain__in=[Margin.Grain.DAY, Margin.Grain.MONTH],
        bucket__gte=window.since,
        bucket__lt=window.until,
    ).delete()
    with connection.cursor() as cursor:
        params: dict[str, Any] = {
            "since": window.since,
            "until": window.until,
            "currency": billing_currency(),
        }
        cursor.execute(_MARGINS, params)
        # A month's margins written at once: without fresh statistics the finance report's
        # plans, which join them, take seconds instead of milliseconds (docs/benchmarks.md).
        cursor.execute("ANALYZE billing_margin")


def figures_refresh(*, now: datetime | None = None) -> Window:
    """Rollups and margins up to `now`, the hour in progress included: the figures at once.

    The beat's jobs roll up whole hours only, minutes apart, so usage shows in the margins an
    hour later at the latest; this is for someone who wants to see it now (`manage.py
    refresh_figures`, which `tf demo` runs). The hour in progress is rolled up to `now`, its
    GPU time too, outside the watermark: budgets and the jobs read rollups only up to the
    watermark, and the next rollup run after the hour ends rebuilds it whole. Returns `now`'s
    month up to `now`.
    """
    now = now or timezone.now()
    rollups_run(now=now, wait=True)
    margins_run(now=now, wait=True)
    month = month_of(now)
    arrived_now = arrivals_cutoff()
    with transaction.atomic():
        job_start(ROLLUPS_LOCK, wait=True)
        hour = Window(hour_start(now), now)
        buckets_rebuild([hour], arrived_by=rollups_arrived() or arrived_now)
    with transaction.atomic():
        job_start("billing.margins", wait=True)
        months_rebuild(Window(month.start, month.end))
    return Window(month.start, now)


def _first_rollup() -> datetime:
    first = UsageRollup.objects.aggregate(first=Min("bucket"))["first"]
    return first or datetime.max.replace(tzinfo=UTC)
