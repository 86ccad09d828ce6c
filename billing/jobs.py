"""What every billing job shares: its advisory lock, its watermark, and the buckets it rebuilds.

Each job takes a PostgreSQL advisory lock for its scope and rebuilds whole buckets in one
transaction (DELETE the buckets, INSERT ... SELECT them again), so a second run, concurrent or
later, computes the same rows, and a worker killed mid-job leaves the previous state. JobRun
keeps each job's watermark: the rollups' next run rebuilds what arrived since theirs
(billing/rollups.py), the margins' starts a grace window before theirs.

The jobs: billing.rollups (hourly and daily usage rollups), billing.margins (margins and the
figures at once), billing.services (invoices and credit notes).
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection

from billing.models import JobRun

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
LONG_AGO = datetime(1, 1, 2, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """The buckets a job run rebuilt: [since, until)."""

    since: datetime
    until: datetime


def grace() -> timedelta:
    return timedelta(seconds=settings.BILLING.grace_seconds)


def job_start(name: str, *, wait: bool) -> bool:
    """Take the job's advisory lock, held until the transaction ends (so a dead worker's is
    freed); False when another holds it and we do not `wait`.

    A job's statements read up to a month of the ledger at once: they get the memory to sort
    and hash it without spilling to disk, and no JIT (compiling them took seconds, saving none).
    """
    with connection.cursor() as cursor:
        function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
        cursor.execute(f"SELECT {function}(hashtext(%s))::text", [name])
        row = cursor.fetchone()
        if not wait and row[0] != "true":
            return False
    job_settings()
    return True


def job_settings() -> None:
    """The memory and planner settings of a job's transaction (job_start's), for a
    connection that works for a job holding the lock elsewhere."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")
        cursor.execute("SET LOCAL work_mem = '256MB'")


def watermark(job: str) -> datetime | None:
    """Where `job`'s last run ended; None before its first."""
    run = JobRun.objects.filter(job=job, scope="").first()
    return run.watermark if run else None


def watermark_set(job: str, at: datetime) -> None:
    JobRun.objects.update_or_create(job=job, scope="", defaults={"watermark": at})


def month_close(month: datetime) -> datetime | None:
    """The cutoff of the close of the month starting at `month`: usage that reached the ledger
    by then is on the month's invoices, later arrivals on the next close's (docs/billing.md,
    "Late usage"). None while the month is open.

    A month closed before arrivals were recorded (its end at or before the invoices'
    watermark, no cutoff of its own) has the earliest cutoff there is: every record stored
    since carries its arrival and came after that close.
    """
    run = JobRun.objects.filter(job="invoices", scope=f"{month:%Y-%m}").first()
    if run is not None:
        return run.watermark
    closed_until = watermark("invoices")
    if closed_until is not None and next_month(month) <= closed_until:
        return LONG_AGO
    return None


def month_closed_last() -> tuple[datetime, datetime] | None:
    """The last month closed with a cutoff of its own, and that cutoff; None before."""
    run = JobRun.objects.filter(job="invoices").exclude(scope="").order_by("-scope").first()
    if run is None:
        return None
    return datetime.strptime(run.scope, "%Y-%m").replace(tzinfo=UTC), run.watermark


def month_close_set(month: datetime, cutoff: datetime) -> None:
    JobRun.objects.create(job="invoices", scope=f"{month:%Y-%m}", watermark=cutoff)
    closed_until = watermark("invoices")
    if closed_until is None or closed_until < next_month(month):
        watermark_set("invoices", next_month(month))


def hour_start(at: datetime) -> datetime:
    """The UTC hour holding `at`."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_start(at: datetime) -> datetime:
    return hour_start(at).replace(hour=0)


def month_start(at: datetime) -> datetime:
    return day_start(at).replace(day=1)


def next_month(at: datetime) -> datetime:
    """The start of the month after the one holding `at`."""
    return month_start(month_start(at) + timedelta(days=32))
