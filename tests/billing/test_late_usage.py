"""Late usage: a record that reaches the ledger after its month was closed is billed once, on
the next invoice, as a prior-period line (issue: "Late usage is lost without a word")."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.margins import margins_run
from billing.models import Invoice, InvoiceLine, Margin, UsageRollup
from billing.money import to_minor
from billing.rating import Quantities, cover_included, fee_requests
from billing.rollups import rollups_run
from billing.selectors import invoice_line_usage, price_list
from billing.services import invoice_preview, invoices_close
from customers.models import Account
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
    rolled_back,
    usage,
    usage_write,
)

pytestmark = pytest.mark.django_db
MAY = datetime(2025, 5, 1, tzinfo=UTC)
MONTHS = (MONTH, NEXT_MONTH, MAY)
CLOSE = {m: (m + timedelta(days=32)).replace(day=1, hour=3) for m in MONTHS}
# 1M input + 1M output tokens are worth 1.17.
LLAMA = PriceSpec("premium", "llama", Decimal("0.27"), Decimal("0.1"), Decimal("0.90"))


def quantities(record: dict[str, Any]) -> Quantities:
    return Quantities.of(
        prompt=record["prompt_tokens"],
        cached=record["cached_prompt_tokens"],
        completion=record["completion_tokens"],
        reasoning=record["reasoning_tokens"],
        requests=fee_requests(record["outcome"]),
    )


@pytest.fixture
def account() -> Account:
    book_create(BookSpec(MONTH - timedelta(days=40), [LLAMA]))
    return account_make("premium")


def test_a_record_stored_after_its_month_closed_is_billed_once_on_the_next_invoice(
    account: Account, caplog: pytest.LogCaptureFixture
) -> None:
    usage_write([usage(MONTH + timedelta(days=9), account_id=account.pk)])
    invoices_close(period_start=MONTH, now=CLOSE[MONTH])
    march = Invoice.objects.get(account=account, period_start=MONTH)
    late = usage(
        MONTH + timedelta(days=28), account_id=account.pk, prompt=1_000_000, completion=1_000_000
    )
    usage_write([late])  # e.g. a spool replayed after a PostgreSQL outage

    again = invoices_close(period_start=MONTH, now=CLOSE[MONTH] + timedelta(days=1))
    assert again.finalised == 0
    assert [(u.account_id, u.month, u.tokens) for u in again.late_pending] == [
        (account.pk, MONTH, 2_000_000)
    ]
    assert "late usage waiting for the next close" in caplog.text
    preview = invoice_preview(account=account, now=NEXT_MONTH + timedelta(days=10))
    assert sum(line.amount for line in preview.lines) == Decimal("1.17")

    april = invoices_close(period_start=NEXT_MONTH, now=CLOSE[NEXT_MONTH])

    assert [(u.account_id, u.month, u.tokens) for u in april.late] == [
        (account.pk, MONTH, 2_000_000)
    ]
    invoice = Invoice.objects.get(account=account, period_start=NEXT_MONTH)
    assert invoice.total_minor == 117
    lines = list(invoice.lines.all())
    assert {(line.item, line.amount_minor) for line in lines} == {("input", 27), ("output", 90)}
    for line in lines:  # dated in March, the month the usage started in
        assert (line.usage_from, line.usage_to) == (MONTH, NEXT_MONTH)
        assert [r.request_id for r in invoice_line_usage(line=line)] == [late["request_id"]]
    billed_in_march = {
        r.request_id for line in march.lines.all() for r in invoice_line_usage(line=line)
    }
    assert late["request_id"] not in billed_in_march
    invoices_close(period_start=MAY, now=CLOSE[MAY])
    assert not Invoice.objects.filter(account=account, period_start=MAY).exists()


def test_late_usage_uses_what_its_month_left_of_the_included_tokens() -> None:
    book_create(BookSpec(MONTH - timedelta(days=40), [LLAMA], {"premium": (Decimal(0), 1000)}))
    account = account_make("premium")
    usage_write(
        [usage(MONTH + timedelta(days=1), account_id=account.pk, prompt=500, completion=100)]
    )
    invoices_close(period_start=MONTH, now=CLOSE[MONTH])
    usage_write([usage(MONTH + timedelta(days=2), account_id=account.pk, prompt=700, completion=0)])

    invoices_close(period_start=NEXT_MONTH, now=CLOSE[NEXT_MONTH])

    april = Invoice.objects.get(account=account, period_start=NEXT_MONTH)
    included = april.lines.get(item=InvoiceLine.Item.INCLUDED)
    assert included.quantity == 400 and included.usage_from == MONTH
    billed_input = april.lines.get(item=InvoiceLine.Item.INPUT)
    assert billed_input.quantity == 700
    assert billed_input.amount + included.amount == Decimal("0.000081")  # 300 tokens at 0.27/M


def test_one_record_with_absurd_counts_does_not_stop_the_close() -> None:
    book_create(BookSpec(MONTH - timedelta(days=40), [LLAMA], {"premium": (Decimal(5), 10**6)}))
    bad, good = account_make("premium"), account_make("premium")
    usage_write(
        [
            usage(
                MONTH + timedelta(days=3),
                account_id=bad.pk,
                prompt=2_000_000_000,
                completion=2_000_000_000,
            ),
            usage(MONTH + timedelta(days=3), account_id=good.pk),
        ]
    )

    rollups_run(now=CLOSE[MONTH])
    result = invoices_close(period_start=MONTH, now=CLOSE[MONTH])

    assert result.finalised == 2
    output = Invoice.objects.get(account=bad).lines.get(item=InvoiceLine.Item.OUTPUT)
    assert output.quantity == 2_000_000_000


def test_a_request_that_failed_on_every_backend_pays_no_request_fee() -> None:
    fee = PriceSpec("premium", "llama", Decimal(1), Decimal(1), Decimal(1), fee=Decimal("0.01"))
    book_create(BookSpec(MONTH - timedelta(days=40), [fee]))
    account = account_make("premium")
    failed = usage(MONTH + timedelta(days=1), account_id=account.pk, prompt=0, completion=0)
    failed |= {"outcome": "backend_error", "status_code": 502}
    usage_write([failed, usage(MONTH + timedelta(days=2), account_id=account.pk)])

    invoices_close(period_start=MONTH, now=CLOSE[MONTH])

    line = Invoice.objects.get(account=account).lines.get(item=InvoiceLine.Item.REQUEST_FEE)
    assert (line.quantity, line.amount_minor) == (1, 1)


record_specs = st.lists(
    st.tuples(
        st.integers(0, 2),  # the month it started in
        st.integers(0, 3),  # how many closes later it arrives
        st.integers(0, 27 * 24),  # hour of the month
        st.integers(0, 3000),  # prompt tokens
        st.integers(0, 1000),  # completion tokens
        st.sampled_from(("ok", "ok", "backend_error")),
        st.integers(0, 1),  # account
    ),
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    specs=record_specs,
    fee=st.sampled_from((Decimal(0), Decimal("9.99"))),
    included=st.integers(0, 4000),
)
def test_any_arrival_order_bills_every_record_once_to_the_minor_unit(
    specs: list[tuple[int, int, int, int, int, str, int]], fee: Decimal, included: int
) -> None:
    with rolled_back():
        price = PriceSpec(
            "premium", "*", Decimal("0.27"), Decimal("0.1"), Decimal("0.9"), fee=Decimal("0.0013")
        )
        book_create(BookSpec(MONTH - timedelta(days=40), [price], {"premium": (fee, included)}))
        accounts = [account_make("premium"), account_make("premium")]
        batches: list[list[dict[str, Any]]] = [[] for _ in range(4)]
        for month, delay, hour, prompt, completion, outcome, who in specs:
            record = usage(
                MONTHS[month] + timedelta(hours=hour),
                account_id=accounts[who].pk,
                prompt=prompt,
                completion=completion,
            ) | {"outcome": outcome}
            batches[min(month + delay, 3)].append(record)
        for k, month in enumerate(MONTHS):
            usage_write(batches[k])
            invoices_close(period_start=month, now=CLOSE[month])
        usage_write(batches[3])  # arrived after every close: waits for the next one
        pending = invoices_close(period_start=MAY, now=CLOSE[MAY] + timedelta(days=1))

        prices = price_list(currency="USD")
        left = {(a.pk, m): included for a in accounts for m in MONTHS}
        for k, month in enumerate(MONTHS):
            for account in accounts:
                mine = sorted(
                    (r for r in batches[k] if r["account_id"] == account.pk),
                    key=lambda r: (r["started_at"], r["request_id"]),
                )
                total = fee
                for record in mine:
                    total += prices.rate(
                        tier="premium",
                        model="llama",
                        at=record["started_at"],
                        quantities=quantities(record),
                    )[1].total
                for usage_month in MONTHS[: k + 1]:
                    of_month = [
                        r
                        for r in mine
                        if r["started_at"] < usage_month + timedelta(days=31)
                        and r["started_at"] >= usage_month
                    ]
                    covered = cover_included(
                        [quantities(r) for r in of_month], left[(account.pk, usage_month)]
                    )
                    for record, cover in zip(of_month, covered, strict=True):
                        total -= prices.rate(
                            tier="premium", model="llama", at=record["started_at"], quantities=cover
                        )[1].total
                        left[(account.pk, usage_month)] -= cover.tokens
                invoice = Invoice.objects.filter(account=account, period_start=month).first()
                billed = invoice.total_minor if invoice else 0
                assert billed == to_minor(total, "USD")
        waiting = sum(u.tokens for u in pending.late_pending)
        assert waiting == sum(quantities(r).tokens for r in batches[3])


def test_rollups_and_margins_pick_up_late_usage_by_its_arrival(account: Account) -> None:
    usage_write([usage(MONTH + timedelta(days=9), account_id=account.pk)])
    rollups_run(now=CLOSE[MONTH])
    margins_run(now=CLOSE[MONTH])
    late = usage(
        MONTH + timedelta(days=28), account_id=account.pk, prompt=1_000_000, completion=1_000_000
    )
    usage_write([late])  # days after its hour left the grace window

    rollups_run(now=CLOSE[MONTH] + timedelta(days=10))
    margins_run(now=CLOSE[MONTH] + timedelta(days=10))

    hour = UsageRollup.objects.get(grain="hour", bucket=late["started_at"], account_id=account.pk)
    assert (hour.requests, hour.revenue) == (1, Decimal("1.17"))
    month = Margin.objects.get(grain="month", bucket=MONTH, dimension="tier", key="premium")
    assert month.revenue == Decimal("1.17") + Decimal("0.000360")
