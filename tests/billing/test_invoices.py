"""Invoices: what a customer is billed adds up, to the cent, to their rated usage (P3)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import services
from billing.margins import margins_run
from billing.models import Invoice, InvoiceLine
from billing.money import to_minor
from billing.rating import PriceList, Quantities, cover_included, rate
from billing.rollups import rollups_run
from billing.selectors import invoice_line_usage, price_list, usage_rated
from billing.services import (
    InvoiceError,
    credit_note_issue,
    invoice_preview,
    invoices_close,
    invoices_close_due,
)
from customers.models import Account
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
    books_in_month,
    cost_model_create,
    records_in_month,
    rolled_back,
    table,
    usage,
    usage_write,
)

pytestmark = pytest.mark.django_db
CLOSE = NEXT_MONTH + timedelta(hours=3)
LLAMA = PriceSpec("premium", "llama", Decimal(3), Decimal("0.3"), Decimal(15), Decimal(60))
OTHERS = PriceSpec("premium", "*", Decimal(1), Decimal("0.1"), Decimal(2), fee=Decimal("0.001"))
CHANGE = MONTH + timedelta(days=15)


@pytest.fixture
def premium() -> Account:
    """A premium account (plan: 20 a month, 1,000 tokens included) whose prices change on the
    16th (llama's input from 3 to 4 per million)."""
    plans = {"premium": (Decimal(20), 1000)}
    book_create(BookSpec(MONTH - timedelta(days=40), [LLAMA, OTHERS], plans))
    dearer = PriceSpec("premium", "llama", Decimal(4), Decimal("0.3"), Decimal(15), Decimal(60))
    book_create(BookSpec(CHANGE, [dearer, OTHERS], plans))
    return account_make("premium")


def lines_of(invoice: Invoice) -> list[tuple[Any, ...]]:
    return list(
        invoice.lines.order_by("pk").values_list(
            "item", "model", "quantity", "unit_price", "amount", "amount_minor"
        )
    )


def test_an_invoice_bills_each_model_book_and_token_class(premium: Account) -> None:
    a, b = premium.pk, premium.pk
    usage_write(
        [
            usage(
                MONTH + timedelta(hours=1),
                account_id=a,
                prompt=1_000_000,
                cached=200_000,
                completion=10_000,
                reasoning=4_000,
            ),
            usage(CHANGE + timedelta(hours=1), account_id=b, prompt=500_000, completion=0),
            usage(
                CHANGE + timedelta(hours=2),
                account_id=b,
                model="qwen",
                prompt=1_000_000,
                completion=0,
            ),
        ]
    )

    result = invoices_close(period_start=MONTH, now=CLOSE)

    assert result.finalised == 1
    invoice = Invoice.objects.get(account=premium)
    assert (invoice.status, invoice.number) == ("finalised", "TF-2025-000001")
    assert lines_of(invoice) == [
        ("input", "llama", 800_000, Decimal(3), Decimal("2.4"), 240),
        ("cached_input", "llama", 200_000, Decimal("0.3"), Decimal("0.06"), 6),
        ("output", "llama", 6_000, Decimal(15), Decimal("0.09"), 9),
        ("reasoning", "llama", 4_000, Decimal(60), Decimal("0.24"), 24),
        ("input", "llama", 500_000, Decimal(4), Decimal(2), 200),
        ("input", "qwen", 1_000_000, Decimal(1), Decimal(1), 100),
        ("request_fee", "qwen", 1, Decimal("0.001"), Decimal("0.001"), 0),
        # The first request's first 1,000 tokens: input, at 3 per million.
        ("included", "llama", 1_000, Decimal(3), Decimal("-0.003"), 0),
        ("plan_fee", "", 1, Decimal(20), Decimal(20), 2000),
    ]
    # 25.788 rounds to 25.79: the cent the floors miss goes to the largest remainder (0.7).
    assert invoice.total_minor == 2579 == sum(line[-1] for line in lines_of(invoice))
    assert invoice.amount == Decimal("25.788")


def test_each_line_traces_to_its_usage(premium: Account) -> None:
    usage_write([usage(CHANGE + timedelta(hours=1), account_id=premium.pk, prompt=2000)])
    invoices_close(period_start=MONTH, now=CLOSE)

    line = InvoiceLine.objects.get(invoice__account=premium, item="input")
    assert (line.usage_from, line.usage_to) == (CHANGE, NEXT_MONTH)
    assert line.price_book is not None and line.price_book.effective_from == CHANGE
    fee = InvoiceLine.objects.get(invoice__account=premium, item="plan_fee")
    assert (fee.usage_from, fee.usage_to) == (MONTH, NEXT_MONTH)


def test_a_lines_usage_is_what_it_bills(premium: Account) -> None:
    records = [
        usage(MONTH + timedelta(days=d), account_id=premium.pk, model=m, prompt=10_000 * d)
        for d in (1, 20)
        for m in ("llama", "qwen")
    ]
    usage_write(records)
    invoices_close(period_start=MONTH, now=CLOSE)

    for line in InvoiceLine.objects.filter(invoice__account=premium, item="input"):
        behind = invoice_line_usage(line=line)
        assert sum(r.prompt_tokens - r.cached_prompt_tokens for r in behind) == line.quantity
        rated = usage_rated(since=line.usage_from, until=line.usage_to, account_id=premium.pk)
        billed = sum(r.input for r in rated if r.model == line.model)
        assert billed == line.amount


def test_a_plan_fee_is_billed_without_usage(premium: Account) -> None:
    invoices_close(period_start=MONTH, now=CLOSE)

    invoice = Invoice.objects.get(account=premium)
    assert lines_of(invoice) == [("plan_fee", "", 1, Decimal(20), Decimal(20), 2000)]


def test_an_account_with_neither_usage_nor_fee_gets_no_invoice(premium: Account) -> None:
    free = account_make("free")
    invoices_close(period_start=MONTH, now=CLOSE)

    assert not Invoice.objects.filter(account=free).exists()


def test_usage_of_an_unknown_account_is_reported_not_invoiced(premium: Account) -> None:
    usage_write([usage(MONTH + timedelta(days=1), account_id=premium.pk + 1000)])

    result = invoices_close(period_start=MONTH, now=CLOSE)

    assert result.unknown_accounts == [premium.pk + 1000]
    assert list(Invoice.objects.values_list("account_id", flat=True)) == [premium.pk]


def test_usage_without_a_price_is_reported_at_close(premium: Account) -> None:
    usage_write([usage(MONTH + timedelta(days=1), account_id=premium.pk, tier="free", prompt=9)])

    result = invoices_close(period_start=MONTH, now=CLOSE)

    assert result.unpriced == [(premium.pk, "free", "llama", 109)]


def test_a_month_is_not_closed_inside_its_grace_window(premium: Account) -> None:
    with pytest.raises(InvoiceError):
        invoices_close(period_start=MONTH, now=NEXT_MONTH + timedelta(minutes=30))
    assert not Invoice.objects.exists()


def test_closing_again_changes_nothing(premium: Account) -> None:
    usage_write([usage(MONTH + timedelta(days=2), account_id=premium.pk)])
    invoices_close(period_start=MONTH, now=CLOSE)
    before = table("billing_invoice"), table("billing_invoiceline"), table("billing_invoicenumber")

    again = invoices_close(period_start=MONTH, now=CLOSE + timedelta(days=1))

    assert again.finalised == 0
    after = table("billing_invoice"), table("billing_invoiceline"), table("billing_invoicenumber")
    assert after == before


def test_every_due_month_is_closed_once_in_order(premium: Account) -> None:
    # Inside March's grace window the months due end with February (the account opened on
    # the last day of 2024).
    early = invoices_close_due(now=NEXT_MONTH + timedelta(hours=1))
    assert early.failed is None
    assert [c.period.start.month for c in early.closed] == [12, 1, 2]
    assert not Invoice.objects.filter(period_start=MONTH).exists()

    closed = invoices_close_due(now=CLOSE)
    assert [c.period.start for c in closed.closed] == [MONTH] and closed.closed[0].finalised == 1
    assert invoices_close_due(now=CLOSE + timedelta(hours=1)).closed == []


def test_a_worker_down_for_months_closes_every_month_it_missed(premium: Account) -> None:
    invoices_close_due(now=CLOSE)
    later = CLOSE + timedelta(days=95)  # the worker comes back in July

    due = invoices_close_due(now=later)

    assert [f"{c.period.start:%Y-%m}" for c in due.closed] == ["2025-04", "2025-05", "2025-06"]
    fees = Invoice.objects.filter(account=premium, period_start__gte=NEXT_MONTH)
    assert fees.count() == 3 and {i.total_minor for i in fees} == {2000}


def test_a_month_that_cannot_close_is_reported_and_holds_back_the_later_ones(
    premium: Account, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    invoices_close_due(now=CLOSE)
    compute = services._drafts_compute

    def failing(period: Any, **kwargs: Any) -> Any:
        if period.start.month == 5:
            raise InvoiceError("the price list could not be read")
        return compute(period, **kwargs)

    monkeypatch.setattr(services, "_drafts_compute", failing)
    due = invoices_close_due(now=CLOSE + timedelta(days=95))

    assert [f"{c.period.start:%Y-%m}" for c in due.closed] == ["2025-04"]
    assert due.failed is not None and f"{due.failed.start:%Y-%m}" == "2025-05"
    assert "price list" in due.error
    assert "a month could not be closed" in caplog.text
    assert not Invoice.objects.filter(period_start__gte=datetime(2025, 5, 1, tzinfo=UTC)).exists()
    with pytest.raises(InvoiceError, match="close it first"):
        invoices_close(
            period_start=datetime(2025, 6, 1, tzinfo=UTC), now=CLOSE + timedelta(days=95)
        )


def test_numbers_are_gap_free_across_invoices_and_credit_notes(premium: Account) -> None:
    other = account_make("premium")
    invoices_close(period_start=MONTH, now=CLOSE)
    first = Invoice.objects.get(account=premium)
    note = credit_note_issue(invoice=first, memo="goodwill", amount_minor=500, now=CLOSE)
    invoices_close(period_start=NEXT_MONTH, now=CLOSE + timedelta(days=31))

    numbers = sorted(str(n) for n in Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"TF-2025-{n:06d}" for n in range(1, 6)]
    assert note.number == "TF-2025-000003"
    assert Invoice.objects.get(account=other, period_start=MONTH).number == "TF-2025-000002"


def test_a_credit_note_reverses_whole_lines_exactly(premium: Account) -> None:
    usage_write([usage(MONTH + timedelta(days=1), account_id=premium.pk, prompt=3_333_333)])
    invoices_close(period_start=MONTH, now=CLOSE)
    invoice = Invoice.objects.get(account=premium)
    charged = invoice.lines.get(item="input")

    note = credit_note_issue(invoice=invoice, memo="wrong model", lines=[charged], now=CLOSE)

    assert (note.kind, note.status, note.corrects_id) == ("credit_note", "finalised", invoice.pk)
    (line,) = note.lines.all()
    assert (line.quantity, line.amount, line.amount_minor) == (
        -charged.quantity,
        -charged.amount,
        -charged.amount_minor,
    )
    assert note.total_minor == -charged.amount_minor


def test_a_line_is_credited_once(premium: Account) -> None:
    usage_write([usage(MONTH + timedelta(days=1), account_id=premium.pk, prompt=3_333_333)])
    invoices_close(period_start=MONTH, now=CLOSE)
    invoice = Invoice.objects.get(account=premium)
    charged = invoice.lines.get(item="input")
    credit_note_issue(invoice=invoice, memo="wrong model", lines=[charged], now=CLOSE)

    with pytest.raises(InvoiceError, match="credited already"):
        credit_note_issue(invoice=invoice, memo="again", lines=[charged], now=CLOSE)
    other = invoice.lines.get(item="plan_fee")
    with pytest.raises(InvoiceError, match="credited already"):
        credit_note_issue(invoice=invoice, memo="both", lines=[other, charged], now=CLOSE)
    assert Invoice.objects.filter(kind="credit_note").count() == 1


def test_credits_never_exceed_the_invoice(premium: Account) -> None:
    invoices_close(period_start=MONTH, now=CLOSE)
    invoice = Invoice.objects.get(account=premium)
    credit_note_issue(invoice=invoice, memo="half", amount_minor=1000, now=CLOSE)
    credit_note_issue(invoice=invoice, memo="rest", amount_minor=1000, now=CLOSE)

    with pytest.raises(InvoiceError):
        credit_note_issue(invoice=invoice, memo="too much", amount_minor=1, now=CLOSE)
    with pytest.raises(InvoiceError):
        credit_note_issue(invoice=invoice, memo="not a credit", amount_minor=0, now=CLOSE)
    assert Invoice.objects.filter(kind="credit_note").count() == 2


def test_a_finalised_invoice_refuses_edits_even_in_the_database(premium: Account) -> None:
    usage_write([usage(MONTH + timedelta(days=1), account_id=premium.pk)])
    invoices_close(period_start=MONTH, now=CLOSE)
    invoice = Invoice.objects.get(account=premium)
    line = invoice.lines.first()
    assert line is not None

    for edit in (
        lambda: Invoice.objects.filter(pk=invoice.pk).update(total_minor=1),
        lambda: InvoiceLine.objects.filter(pk=line.pk).update(amount_minor=1),
        lambda: InvoiceLine.objects.filter(pk=line.pk).delete(),
        lambda: Invoice.objects.filter(pk=invoice.pk).delete(),
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            edit()

    # The Stripe mirror may still change.
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id="in_1", payment="open")
    InvoiceLine.objects.filter(pk=line.pk).update(stripe_item_id="ii_1")


def test_the_preview_is_the_invoice_the_close_will_make(premium: Account) -> None:
    usage_write(
        [
            usage(MONTH + timedelta(days=d), account_id=premium.pk, model=m, prompt=700 * d)
            for d in range(1, 28)
            for m in ("llama", "qwen")
        ]
    )
    preview = invoice_preview(account=premium, now=NEXT_MONTH - timedelta(microseconds=1))
    invoices_close(period_start=MONTH, now=CLOSE)

    invoice = Invoice.objects.get(account=premium)
    assert [
        (line.item, line.model, line.quantity, line.amount, line.amount_minor)
        for line in preview.lines
    ] == list(
        invoice.lines.order_by("pk").values_list(
            "item", "model", "quantity", "amount", "amount_minor"
        )
    )
    assert preview.total_minor == invoice.total_minor
    assert not Invoice.objects.filter(status="draft").exists()


def test_the_preview_of_a_month_sees_only_that_month(premium: Account) -> None:
    usage_write([usage(MONTH - timedelta(hours=1), account_id=premium.pk, prompt=10**6)])
    preview = invoice_preview(account=premium, now=MONTH + timedelta(days=1))
    assert [line.item for line in preview.lines] == ["plan_fee"]


def expected_total(
    prices: PriceList, account: Account, records: list[dict[str, Any]], currency: str = "USD"
) -> int:
    """The reference: each request rated alone in Python, minus what the plan includes, plus
    the plan's fee, rounded once."""
    mine = sorted(
        (r for r in records if r["account_id"] == account.pk),
        key=lambda r: (r["started_at"], r["request_id"]),
    )
    total = Decimal(0)
    for record in mine:
        rated = prices.rate(
            tier=record["tier"],
            model=record["model"],
            at=record["started_at"],
            quantities=quantities(record),
        )
        total += rated[1].total if rated else 0
    book = prices.book_at(MONTH)
    plan = book.plans.get(account.tier.slug) if book else None
    if plan is not None:
        total += plan.monthly_fee
        plan_tier = [r for r in mine if r["tier"] == account.tier.slug]
        covered = cover_included([quantities(r) for r in plan_tier], plan.included_tokens)
        for record, cover in zip(plan_tier, covered, strict=True):
            in_force = prices.book_at(record["started_at"])
            terms = in_force.terms(record["tier"], record["model"]) if in_force else None
            total -= rate(cover, terms).total if terms else 0
    return to_minor(total, currency)


def quantities(record: dict[str, Any]) -> Quantities:
    return Quantities.of(
        prompt=record["prompt_tokens"],
        cached=record["cached_prompt_tokens"],
        completion=record["completion_tokens"],
        reasoning=record["reasoning_tokens"],
    )


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    books=books_in_month(),
    records=records_in_month(accounts=(0, 1, 2)),
    tiers=st.lists(st.sampled_from(("free", "premium")), min_size=3, max_size=3),
)
def test_invoices_add_up_to_rated_usage_to_the_cent(
    books: list[BookSpec], records: list[dict[str, Any]], tiers: list[str]
) -> None:
    with rolled_back():
        for spec in books:
            book_create(spec)
        cost_model_create("gpu-a")
        accounts = [account_make(tier) for tier in tiers]
        for record in records:
            record["account_id"] = accounts[record["account_id"]].pk
        usage_write(records)
        prices = price_list(currency="USD")

        rollups_run(now=CLOSE)
        margins_run(now=CLOSE)
        invoices_close(period_start=MONTH, now=CLOSE)

        for account in accounts:
            invoice = Invoice.objects.filter(account=account).first()
            expected = expected_total(prices, account, records)
            if invoice is None:
                assert expected == 0
                continue
            lines = list(invoice.lines.values_list("amount_minor", flat=True))
            assert invoice.total_minor == sum(lines) == expected

        # Every job again: not a row changes.
        tables = ("billing_usagerollup", "billing_margin", "billing_invoice", "billing_invoiceline")
        before = [table(name) for name in tables]
        rollups_run(now=CLOSE)
        margins_run(now=CLOSE)
        invoices_close(period_start=MONTH, now=CLOSE + timedelta(hours=1))
        assert [table(name) for name in tables] == before
