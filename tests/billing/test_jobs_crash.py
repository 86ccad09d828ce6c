"""Billing jobs killed mid-run, or run side by side, leave what one clean run leaves.

These need committed data (a worker process, several connections), so they use the session's
live database and remove what they wrote afterwards.
"""

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Sum

from billing import rollups as rollups_module
from billing.margins import margins_run
from billing.models import CostModel, Invoice, InvoiceNumber, JobRun, Margin, UsageRollup
from billing.rollups import rollups_rebuild, rollups_run
from billing.seal import seal_lifted
from billing.services import invoices_close
from catalogue.models import PriceBook
from customers.models import Account
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
    cost_model_create,
    rolled_back,
    table,
    usage,
    usage_write,
)
from tests.support.servers import ROOT
from tests.support.waiting import wait_until

CLOSE = NEXT_MONTH + timedelta(hours=3)
TABLES = ("billing_usagerollup", "billing_margin", "billing_invoice", "billing_invoiceline")
APP = "tf-billing-killed-job"
_WORKER = (
    "import sys, django; django.setup(); from datetime import datetime; "
    "from billing import services; "
    "now = datetime.fromisoformat(sys.argv[2]); "
    "services.rollups_run(now=now) if sys.argv[1] == 'rollups' "
    "else services.invoices_close(period_start=services.month_of(now - services.DAY).start, "
    "now=now)"
)


@pytest.fixture
def month_of_usage(live_db: None) -> Iterator[list[Account]]:
    """Three accounts' March, committed; removed again after the test."""
    plans = {"premium": (Decimal("9.99"), 5000)}
    prices = [PriceSpec("premium", "*", Decimal(3), Decimal("0.3"), Decimal(15))]
    book = book_create(BookSpec(MONTH - timedelta(days=40), prices, plans))
    cost = cost_model_create("gpu-a", effective_from=MONTH)
    accounts = [account_make("premium") for _ in range(3)]
    usage_write(
        [
            usage(
                MONTH + timedelta(minutes=37 * n),
                account_id=accounts[n % 3].pk,
                prompt=1000 + n,
                cached=n % 100,
                completion=50 + n % 7,
                energy=90.0 + n,
            )
            for n in range(1200)
        ]
    )
    yield accounts
    _remove(accounts, book, cost)


def _remove(accounts: list[Account], book: PriceBook, cost: CostModel) -> None:
    ids = [a.pk for a in accounts]
    # Finalised invoices, their counter and a book in force refuse deletes (by design): the
    # clean-up lifts the seal for its own transaction.
    with seal_lifted(), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM billing_invoiceline WHERE invoice_id IN "
            "(SELECT id FROM billing_invoice WHERE account_id = ANY(%s))",
            [ids],
        )
        cursor.execute("DELETE FROM billing_invoice WHERE account_id = ANY(%s)", [ids])
        cursor.execute(
            "DELETE FROM metering_usagerecord WHERE account_id = ANY(%s) "
            "AND started_at >= %s AND started_at < %s",
            [ids, MONTH, NEXT_MONTH],
        )
        window = {"bucket__gte": MONTH - timedelta(days=60), "bucket__lt": NEXT_MONTH}
        UsageRollup.objects.filter(**window).delete()
        Margin.objects.filter(**window).delete()
        InvoiceNumber.objects.filter(prefix=f"TF-{CLOSE:%Y}-").delete()
        book.prices.all().delete()
        book.plans.all().delete()
        book.delete()
    JobRun.objects.filter(
        job__in=["rollups", "rollups.arrivals", "rollups.attributions", "margins", "invoices"]
    ).delete()
    cost.delete()
    Account.objects.filter(pk__in=ids).delete()


def clean_run(job: Callable[[], Any]) -> list[list[tuple[Any, ...]]]:
    """What an uninterrupted run leaves, found without keeping it."""
    with rolled_back():
        job()
        return [table(name) for name in TABLES]


def worker(job: str, now: datetime) -> subprocess.Popen[bytes]:
    """A separate process running one job, as a Celery worker would, on the test database."""
    db = settings.DATABASES["default"]
    env = os.environ | {
        "TF_PROFILE": "local",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "PGAPPNAME": APP,
    }
    command = [sys.executable, "-c", _WORKER, job, now.isoformat()]
    return subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE)


def held(sql: str) -> psycopg.Connection[Any]:
    """Another session holding row locks (its transaction open) that a job will wait for."""
    db = settings.DATABASES["default"]
    conn = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"])
    conn.execute(sql)
    return conn


def wait_until_blocked(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until the worker's session waits for a lock: its job has done its writes by then."""
    with connection.cursor() as cursor:

        def blocked() -> bool:
            if process.poll() is not None:
                assert process.stderr is not None
                raise AssertionError(process.stderr.read().decode())
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND wait_event_type = 'Lock'",
                [APP],
            )
            return bool(cursor.fetchone()[0])

        wait_until(blocked, timeout=timeout, what="the worker to get to its last step")


def wait_until_gone(timeout: float = 30.0) -> None:
    with connection.cursor() as cursor:

        def gone() -> bool:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [APP]
            )
            return not cursor.fetchone()[0]

        wait_until(gone, timeout=timeout, what="the killed worker's session to end")


def kill_at_last_step(job: str, now: datetime, lock_sql: str) -> None:
    blocker = held(lock_sql)
    process = worker(job, now)
    try:
        wait_until_blocked(process)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        blocker.rollback()
        blocker.close()
    wait_until_gone()


def test_a_rollup_killed_mid_run_leaves_the_last_state_and_a_rerun_finishes_it(
    month_of_usage: list[Account],
) -> None:
    first = MONTH + timedelta(days=10)
    rollups_run(now=first)
    before = [table(name) for name in TABLES]
    late = first - timedelta(minutes=30)
    usage_write([usage(late, account_id=month_of_usage[0].pk, prompt=777_777)])
    later = first + timedelta(minutes=10)
    expected = clean_run(lambda: rollups_run(now=later))
    assert expected != before

    # Its rows are rebuilt and it waits for the watermark's row: killed there.
    kill_at_last_step(
        "rollups", later, "BEGIN; SELECT * FROM billing_jobrun WHERE job = 'rollups' FOR UPDATE"
    )

    assert [table(name) for name in TABLES] == before
    rollups_run(now=later)
    assert [table(name) for name in TABLES] == expected


def test_a_rebuild_cut_short_leaves_each_hour_rebuilt_or_as_it_was_and_a_rerun_finishes_it(
    month_of_usage: list[Account], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month's rebuild goes a few days at a time on connections of its own, each piece
    committed (billing/rollups.py, days_rebuild): one piece that fails leaves its hours as
    they were and the others rebuilt, never an hour half done; running it again finishes."""
    rollups_run(now=CLOSE)
    before = hours_gpu_cost()
    CostModel.objects.filter(backend="gpu-a").update(gpu_cost_per_hour=Decimal(20))  # corrected
    expected = clean_run(lambda: rollups_rebuild(since=MONTH, until=NEXT_MONTH))
    calls, lock = [0], threading.Lock()
    rebuild = rollups_module.buckets_rebuild

    def failing_third(*args: Any, **kwargs: Any) -> None:
        with lock:
            calls[0] += 1
            third = calls[0] == 3
        if third:
            raise RuntimeError("the database went away")
        rebuild(*args, **kwargs)

    monkeypatch.setattr(rollups_module, "buckets_rebuild", failing_third)
    with pytest.raises(RuntimeError):
        rollups_rebuild(since=MONTH, until=NEXT_MONTH)
    monkeypatch.undo()

    after = hours_gpu_cost()
    rebuilt = {hour for hour, cost in after.items() if cost != before[hour]}
    assert rebuilt and rebuilt != set(before)  # some pieces done, one not
    assert all(abs(after[hour] - before[hour] * 20 / 12) < Decimal("1e-9") for hour in rebuilt)
    rollups_rebuild(since=MONTH, until=NEXT_MONTH)
    assert [table(name) for name in TABLES] == expected


def hours_gpu_cost() -> dict[datetime, Decimal]:
    hours = UsageRollup.objects.filter(grain="hour", bucket__gte=MONTH, bucket__lt=NEXT_MONTH)
    return dict(hours.values("bucket").annotate(cost=Sum("gpu_cost")).values_list("bucket", "cost"))


def test_a_close_killed_mid_run_takes_no_number_and_a_rerun_closes_the_month(
    month_of_usage: list[Account],
) -> None:
    rollups_run(now=CLOSE)
    margins_run(now=CLOSE)
    expected = clean_run(lambda: invoices_close(period_start=MONTH, now=CLOSE))
    InvoiceNumber.objects.create(prefix=f"TF-{CLOSE:%Y}-", last=0)
    before = [table(name) for name in TABLES]

    # Its drafts are stored and it waits for the number counter: killed there.
    kill_at_last_step("invoices", CLOSE, "BEGIN; SELECT * FROM billing_invoicenumber FOR UPDATE")

    assert [table(name) for name in TABLES] == before
    assert InvoiceNumber.objects.get(prefix=f"TF-{CLOSE:%Y}-").last == 0
    invoices_close(period_start=MONTH, now=CLOSE)
    assert [table(name) for name in TABLES] == expected
    numbers = sorted(str(n) for n in Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"TF-{CLOSE:%Y}-{n:06d}" for n in (1, 2, 3)]


def test_jobs_run_side_by_side_leave_what_one_run_leaves(
    month_of_usage: list[Account],
) -> None:
    def together() -> None:
        rollups_run(now=CLOSE, wait=True)
        margins_run(now=CLOSE, wait=True)
        invoices_close(period_start=MONTH, now=CLOSE)

    expected = clean_run(together)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            together()
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [table(name) for name in TABLES] == expected
