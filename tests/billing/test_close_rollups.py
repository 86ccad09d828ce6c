"""The incremental rollups and the close that reads them (docs/billing.md, "Rollups").

Whatever order usage arrives in (late, out of order, a lost request's guess corrected by its
final record, a price change mid-month), the rollups brought up to date run by run equal those
rebuilt from scratch, the invoices the close reads from them equal, to the minor unit, the
invoices computed from the raw records at the same cutoff, and the finance report's
reconciliation read from them and the late records is the ledger's.
"""

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import reports
from billing.invoicing import Period
from billing.jobs import LONG_AGO, month_close
from billing.models import Invoice, JobRun, UsageRollup
from billing.rating import FEE_EXEMPT
from billing.rollups import rollups_run
from billing.services import _drafts_compute, invoices_close
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    TIERS,
    a_record,
    account_make,
    book_create,
    books_in_month,
    cost_model_create,
    rolled_back,
    table,
    usage,
    usage_write,
)

pytestmark = pytest.mark.django_db
CLOSE = NEXT_MONTH + timedelta(hours=3)
# Rollup runs at these times, each after a batch of arrivals: the hours before each are rolled.
RUNS = (MONTH + timedelta(days=9), MONTH + timedelta(days=20, hours=5), CLOSE)


@st.composite
def arrivals(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """Records of a few busy hours (so that an allowance runs out inside one), in three batches
    that reach the ledger in turn: a batch holds records of hours already rolled up (late)
    as well as new ones, and some requests arrive first as a `gateway_lost` guess that a
    later batch corrects."""
    hours = draw(st.lists(st.integers(0, 31 * 24 - 1), min_size=1, max_size=4, unique=True))
    batches: list[list[dict[str, Any]]] = [[], [], []]
    starts = st.tuples(st.sampled_from(hours), st.integers(0, 3600 * 10**6 - 1)).map(
        lambda at: MONTH + timedelta(hours=at[0], microseconds=at[1])
    )
    for _ in range(draw(st.integers(1, 20))):
        record = draw(a_record(starts, (0, 1), prompt=120_000, completion=40_000))
        record["outcome"] = draw(st.sampled_from(("ok", "ok", "backend_error")))
        batch = draw(st.integers(0, 2))
        if batch < 2 and draw(st.booleans()):
            guess = record | {"outcome": "gateway_lost", "completion_tokens": 0}
            guess |= {"reasoning_tokens": 0, "tokens_estimated": True}
            batches[batch].append(guess)
            batch = draw(st.integers(batch + 1, 2))
        batches[batch].append(record)
    return batches


def _lines(invoice_lines: Any) -> list[tuple[Any, ...]]:
    return sorted(invoice_lines, key=repr)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    books=books_in_month(),
    batches=arrivals(),
    tiers=st.lists(st.sampled_from(TIERS), min_size=2, max_size=2),
)
def test_a_close_from_the_rollups_bills_what_the_records_do(
    books: list[Any], batches: list[list[dict[str, Any]]], tiers: list[str]
) -> None:
    with rolled_back():
        for spec in books:
            book_create(spec)
        cost_model_create("gpu-a")
        accounts = [account_make(tier) for tier in tiers]
        for batch, now in zip(batches, RUNS, strict=True):
            for record in batch:
                record["account_id"] = accounts[record["account_id"]].pk
            usage_write(batch)
            rollups_run(now=now)

        invoices_close(period_start=MONTH, now=CLOSE)

        # The rollups as run after run left them: as if rebuilt once, from scratch.
        incremental = table("billing_usagerollup")
        UsageRollup.objects.all().delete()
        JobRun.objects.filter(job__startswith="rollups").delete()
        rollups_run(now=CLOSE)
        assert table("billing_usagerollup") == incremental

        # The invoices read from them: those of the raw records at the close's cutoff.
        cutoff = month_close(MONTH)
        assert cutoff is not None
        drafts = _drafts_compute(
            Period(MONTH, NEXT_MONTH), until=NEXT_MONTH, arrived_by=cutoff, late_since=None
        )
        expected = {
            d.account_id: _lines(
                (
                    ln.item,
                    ln.tier,
                    ln.model,
                    ln.price_book_id,
                    ln.project_id,
                    ln.quantity,
                    ln.amount_minor,
                )
                for ln in d.lines
            )
            for d in drafts
            if d.lines
        }
        billed = {
            invoice.account_id: _lines(
                invoice.lines.values_list(
                    "item",
                    "tier",
                    "model",
                    "price_book_id",
                    "project_id",
                    "quantity",
                    "amount_minor",
                )
            )
            for invoice in Invoice.objects.filter(kind=Invoice.Kind.INVOICE)
        }
        assert billed == expected

        # Usage of the month arrives after its close: the finance report's reconciliation,
        # read from the rollups and the late records, is the ledger's alone.
        late = [r | {"request_id": str(uuid.uuid4())} for r in batches[0][:3]]
        usage_write(late)
        rollups_run(now=CLOSE + timedelta(hours=1))
        whole_ledger = {"rolled_until": LONG_AGO, "rolled_by": LONG_AGO, "after": LONG_AGO}
        assert report_usage(reports._rolled(cutoff)) == report_usage(whole_ledger)


def report_usage(rolled: dict[str, Any]) -> list[tuple[Any, ...]]:
    cutoff = month_close(MONTH)
    params = {"since": MONTH, "until": NEXT_MONTH, "currency": "USD", "cutoff": cutoff}
    params |= {"last_cutoff": cutoff, "fee_exempt": list(FEE_EXEMPT), **rolled}
    with connection.cursor() as cursor:
        cursor.execute(reports._USAGE, params)
        return sorted(cursor.fetchall())


def test_a_run_rebuilds_only_the_hours_whose_records_changed() -> None:
    """Usage of an hour rolled up long ago arrives: that hour is rebuilt, the others are left
    as they were (their rows keep their ids), and one more run changes nothing."""
    account = account_make("premium")
    old, other = MONTH + timedelta(hours=2), MONTH + timedelta(hours=5)
    usage_write([usage(old, account_id=account.pk), usage(other, account_id=account.pk)])
    rollups_run(now=MONTH + timedelta(days=3))
    kept = set(UsageRollup.objects.filter(bucket=other).values_list("pk", flat=True))

    usage_write([usage(old + timedelta(minutes=7), account_id=account.pk, prompt=500)])
    window = rollups_run(now=MONTH + timedelta(days=3, minutes=30))

    assert window is not None and window.since == window.until  # no new hour
    hour = UsageRollup.objects.get(grain="hour", bucket=old, account_id=account.pk)
    assert (hour.requests, hour.prompt_tokens) == (2, 1500)
    assert set(UsageRollup.objects.filter(bucket=other).values_list("pk", flat=True)) == kept
    before = table("billing_usagerollup")
    rollups_run(now=MONTH + timedelta(days=3, minutes=40))
    assert table("billing_usagerollup") == before


def test_a_corrected_guess_reaches_its_rolled_up_hour() -> None:
    """A request recorded as `gateway_lost` (its gateway died) and rolled up, then corrected by
    its final record: the correction keeps the guess's arrival, and its hour is rebuilt."""
    account = account_make("premium")
    record = usage(MONTH + timedelta(hours=1), account_id=account.pk, completion=900)
    guess = record | {"outcome": "gateway_lost", "completion_tokens": 0}
    usage_write([guess])
    rollups_run(now=MONTH + timedelta(days=1))
    usage_write([record])
    rollups_run(now=MONTH + timedelta(days=1, minutes=5))

    hour = UsageRollup.objects.get(grain="hour", account_id=account.pk)
    assert (hour.requests, hour.completion_tokens) == (1, 900)
