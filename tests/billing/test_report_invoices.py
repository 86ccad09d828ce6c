"""The finance report ties to the invoices: a closed month's report states what its invoices
sum to, reconciles list-price revenue to it step by step to the cent, and shows what finance
signs (register, subscription and usage revenue, credit notes, paid and outstanding with
ageing, usage not invoiced, data as of)."""

import base64
import csv
import io
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db.models import Sum
from django.test import Client

from billing.margins import margins_run
from billing.models import Invoice, InvoiceLine, UsageRollup
from billing.money import from_minor, to_minor
from billing.report_forms import _money, _summary, report_csv, report_html, report_pdf
from billing.reports import (
    FinanceReport,
    Line,
    ReportError,
    ageing,
    collection,
    finance_report,
    split_by_tier,
)
from billing.rollups import rollups_run
from billing.selectors import usage_rated
from billing.services import credit_note_issue, invoices_close
from customers.models import Account
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
    cost_model_create,
    usage,
    usage_write,
)

pytestmark = pytest.mark.django_db
FEB = datetime(2025, 2, 1, tzinfo=UTC)
CLOSED = NEXT_MONTH + timedelta(hours=3)  # the March close; finalised_at of its invoices
UNKNOWN = 987_654  # an account id with usage and no account
PREMIUM = PriceSpec("premium", "llama", Decimal("2.5"), Decimal("0.25"), Decimal("10"))
FREE = PriceSpec("free", "*", Decimal("0.1"), Decimal(0), Decimal("0.4"), fee=Decimal("0.0003"))


@dataclass
class Month:
    acme: Account  # premium: usage, a plan fee, late usage of February, a credit note
    globex: Account  # premium: usage and a fee, paid
    initech: Account  # free: usage partly covered by included tokens
    hooli: Account  # premium, no usage: a plan fee alone
    waiting: dict[str, object]  # a March record that arrived after March closed


@pytest.fixture
def month() -> Month:
    """February closed, then a late February record; March with usage of four accounts, one
    unknown account id, unpriced usage; March closed, then a late March record; a credit note
    and one invoice paid; rolled up and margined."""
    plans = {"premium": (Decimal("59.75"), 0), "free": (Decimal(0), 400_000)}
    book_create(BookSpec(FEB - timedelta(days=40), [PREMIUM, FREE], plans))
    cost_model_create("gpu-a", effective_from=FEB, gpu_cost_per_hour=Decimal("0.5"))
    acme, globex, hooli = (account_make("premium") for _ in range(3))
    initech = account_make("free")
    usage_write([usage(FEB + timedelta(days=3), account_id=acme.pk, prompt=300_000)])
    invoices_close(period_start=FEB, now=MONTH + timedelta(hours=3))
    late_feb = usage(FEB + timedelta(days=20), account_id=acme.pk, prompt=1_234_567)
    records = [late_feb]
    for n in range(30):
        at = MONTH + timedelta(days=n, hours=n % 7, minutes=n)
        records += [
            usage(at, account_id=acme.pk, prompt=40_000 + 1_111 * n, completion=3_333 + 7 * n),
            usage(at, account_id=globex.pk, prompt=9_000 + 13 * n, cached=1_000, completion=777),
            usage(at, account_id=initech.pk, tier="free", prompt=20_000 + n, completion=5_000),
            usage(at, account_id=UNKNOWN, backend=f"gpu-{'ab'[n % 2]}", prompt=123_457),
            usage(at, account_id=globex.pk, tier="interactive", prompt=5_000, completion=500),
        ]
    usage_write(records)
    invoices_close(period_start=MONTH, now=CLOSED)
    waiting = usage(MONTH + timedelta(days=30, hours=2), account_id=globex.pk, prompt=654_321)
    usage_write([waiting])
    acme_invoice = Invoice.objects.get(account=acme, period_start=MONTH)
    credit_note_issue(invoice=acme_invoice, memo="goodwill", amount_minor=1234, now=CLOSED)
    Invoice.objects.filter(account=globex, period_start=MONTH).update(
        payment="paid", paid_at=CLOSED + timedelta(days=20)
    )
    Invoice.objects.filter(account=acme, period_start=MONTH).update(payment="open")
    rollups_run(now=CLOSED)
    margins_run(now=CLOSED)
    return Month(acme, globex, initech, hooli, waiting)


def invoices_sum() -> int:
    """What the month's invoices add up to, as finance sums them."""
    invoices = Invoice.objects.filter(
        kind="invoice", status="finalised", period_start=MONTH, currency="USD"
    )
    return int(invoices.aggregate(total=Sum("total_minor"))["total"])


def lines_sum(**filters: object) -> int:
    lines = InvoiceLine.objects.filter(
        invoice__kind="invoice", invoice__status="finalised", invoice__period_start=MONTH
    )
    return lines.filter(**filters).aggregate(total=Sum("amount_minor"))["total"] or 0


def rated(account_id: int) -> Decimal:
    records = usage_rated(since=MONTH, until=NEXT_MONTH, account_id=account_id)
    return sum((r.total for r in records), Decimal(0))


def report(*, now: datetime = CLOSED + timedelta(days=10), top: int | None = None) -> FinanceReport:
    return finance_report(period_start=MONTH, top=top, now=now)


def steps(report: FinanceReport) -> dict[str, int]:
    return {step.key: step.minor for step in report.steps}


def pdf_text(pdf: bytes) -> str:
    """The text drawn on the PDF's pages: reportlab's streams (ASCII85, then deflate)
    decoded, with the escapes of its string literals undone."""
    text = []
    for stream in re.findall(rb"stream\r?\n(.*?)~>\s*endstream", pdf, re.S):
        data = base64.a85decode(stream, ignorechars=b" \t\n\r\x0b")
        text.append(zlib.decompress(data).decode("latin-1"))
    return "".join(text).replace("\\(", "(").replace("\\)", ")")


def account_line(report: FinanceReport, account: Account | int) -> Line:
    key = str(account if isinstance(account, int) else account.pk)
    (line,) = [line for line in report.lines["account"] if line.key == key]
    return line


# 1. and 10. It states what the invoices add up to, and reconciles list price to it -----------


def test_the_report_states_the_invoiced_total_exactly_as_the_invoices_sum_in_all_three_forms(
    month: Month,
) -> None:
    expected = invoices_sum()
    found = report()

    assert found.billing.invoiced_minor == expected
    rows = list(csv.DictReader(io.StringIO(report_csv(found))))
    (invoiced,) = [r for r in rows if r["dimension"] == "reconciliation" and r["key"] == "invoiced"]
    assert Decimal(invoiced["amount"]) == from_minor(expected, "USD")
    (total,) = [r for r in rows if r["dimension"] == "total"]
    assert Decimal(total["invoiced"]) == from_minor(expected, "USD")
    shown = f"{from_minor(expected, 'USD'):,}"
    html = report_html(report(top=15))
    assert re.search(rf"Invoiced revenue[^<]*</td><td>{re.escape(shown)}</td>", html)
    assert f"({shown})" in pdf_text(report_pdf(report(top=15)))


def test_the_reconciliation_adds_up_to_the_cent_from_list_price_to_net_billed(
    month: Month,
) -> None:
    found = report()
    by_key = steps(found)

    list_price = UsageRollup.objects.filter(
        grain="hour", bucket__gte=MONTH, bucket__lt=NEXT_MONTH
    ).aggregate(revenue=Sum("revenue"))["revenue"]
    assert by_key["list_price"] == to_minor(list_price, "USD")
    assert by_key["unknown_accounts"] == -to_minor(rated(UNKNOWN), "USD") < 0
    waiting = usage_rated(since=MONTH, until=NEXT_MONTH, account_id=month.globex.pk)
    (late,) = [r for r in waiting if r.request_id == str(month.waiting["request_id"])]
    assert by_key["waiting"] == -to_minor(late.total, "USD") < 0
    assert by_key["unpriced"] == 0
    assert by_key["included"] == lines_sum(item="included", usage_from__gte=MONTH) < 0
    assert by_key["plan_fees"] == lines_sum(item="plan_fee") == 3 * 5975
    assert by_key["prior_2025-02"] == lines_sum(usage_from__lt=MONTH) > 0
    assert "margins_behind" not in by_key
    assert "ledger_difference" not in by_key
    assert abs(by_key.get("rounding", 0)) <= InvoiceLine.objects.count()
    parts = [step.minor for step in found.steps if not step.total and step.key != "credit_notes"]
    assert sum(parts) == by_key["invoiced"] == invoices_sum()
    credited = Invoice.objects.filter(kind="credit_note").aggregate(t=Sum("total_minor"))["t"]
    assert by_key["credit_notes"] == credited == -1234
    assert by_key["net_billed"] == invoices_sum() - 1234


# 5. What finance signs ------------------------------------------------------------------------


def test_the_register_lists_every_invoice_and_credit_note_of_the_month(month: Month) -> None:
    found = report()

    documents = Invoice.objects.filter(period_start=MONTH, status="finalised")
    assert [d.number for d in found.billing.documents] == sorted(str(d.number) for d in documents)
    note = next(d for d in found.billing.documents if d.kind == "credit_note")
    acme_invoice = Invoice.objects.get(account=month.acme, kind="invoice", period_start=MONTH)
    assert (note.account_id, note.corrects, note.total_minor) == (
        month.acme.pk,
        acme_invoice.number,
        -1234,
    )
    html = report_html(found)
    for document in documents:
        assert f"<td>{document.number}</td>" in html
    assert f"credit note for {acme_invoice.number}" in html
    hooli = Invoice.objects.get(account=month.hooli, period_start=MONTH)
    assert hooli.total_minor == 5975  # a plan fee alone: in the register and the accounts
    assert account_line(found, month.hooli).billed_minor == 5975


def test_subscription_and_usage_revenue_are_split_with_included_tokens_as_a_deduction(
    month: Month,
) -> None:
    rows = dict(split_by_tier(report()))

    assert rows["free"]["included"] == lines_sum(invoice__account=month.initech, item="included")
    assert rows["free"]["included"] < 0
    assert rows["premium"]["plan_fee"] == 3 * 5975
    assert rows["premium"]["prior"] == lines_sum(usage_from__lt=MONTH)
    assert sum(rows["total"].values()) == invoices_sum()


def test_paid_outstanding_and_ageing_are_as_of_the_reports_data(month: Month) -> None:
    ten_days = report(now=CLOSED + timedelta(days=10))
    later = report(now=CLOSED + timedelta(days=45))
    much_later = report(now=CLOSED + timedelta(days=120))

    globex = Invoice.objects.get(account=month.globex, kind="invoice", period_start=MONTH)
    billed = invoices_sum()
    zero = sum(d.total_minor for d in ten_days.billing.invoices if d.total_minor == 0)
    assert ageing(ten_days)[0] == ("0-30 days", 4, billed - zero)  # globex paid on day 20
    assert ageing(later)[1] == ("31-60 days", 3, billed - globex.total_minor)
    assert ageing(much_later)[3] == ("over 90 days", 3, billed - globex.total_minor)
    states = {state: (count, minor) for state, count, minor in collection(later)}
    assert states["paid"] == (1, globex.total_minor)
    assert states["outstanding: open at Stripe"][0] == 1
    assert states["credit notes"] == (1, -1234)
    assert "Data as of 2025-05-16 03:00 UTC" in report_html(later)


def test_usage_not_on_the_invoices_is_listed_with_why(month: Month) -> None:
    found = report()
    not_invoiced = {(u.kind, u.account_id): u for u in found.billing.usage if u.kind != "invoiced"}

    assert set(not_invoiced) == {
        ("unknown", UNKNOWN),
        ("unpriced", month.globex.pk),
        ("waiting", month.globex.pk),
    }
    assert not_invoiced["unpriced", month.globex.pk].tokens == 30 * 5_500
    html = report_html(found)
    assert "arrived after the last close: the next close bills it" in html
    assert f"unknown account #{UNKNOWN} (not invoiced)" in html


def test_an_open_month_says_its_usage_is_not_invoiced_yet() -> None:
    book_create(BookSpec(FEB, [PREMIUM]))
    account = account_make("premium")
    usage_write([usage(MONTH + timedelta(days=2), account_id=account.pk, prompt=1_000_000)])
    rollups_run(now=MONTH + timedelta(days=3))
    margins_run(now=MONTH + timedelta(days=3))

    found = finance_report(period_start=MONTH, now=MONTH + timedelta(days=3))

    by_key = steps(found)
    assert by_key["open"] == -by_key["list_price"] == -250
    assert by_key["invoiced"] == 0
    assert found.billing.cutoff is None
    assert "this month is open (not closed)" in report_html(found)


# 6. Margin on what was invoiced ---------------------------------------------------------------


def test_margin_on_billed_revenue_is_shown_beside_list_price_margin(month: Month) -> None:
    found = report()

    acme = account_line(found, month.acme)
    invoice = Invoice.objects.get(account=month.acme, kind="invoice", period_start=MONTH)
    assert acme.billed_minor == invoice.total_minor - 1234
    assert acme.billed_margin("USD") == from_minor(invoice.total_minor - 1234, "USD") - acme.cost
    assert acme.billed_margin("USD") != acme.margin
    assert found.total.billed_minor == invoices_sum() - 1234
    html = report_html(found)
    assert "margin on billed" in html
    assert "Margin on billed" in dict(_summary_of(found))


def _summary_of(found: FinanceReport) -> list[tuple[str, str]]:
    return _summary(found)


# 7. Unknown accounts are not revenue ----------------------------------------------------------


def test_usage_of_unknown_accounts_is_shown_apart_never_as_revenue(month: Month) -> None:
    found = report()

    hours = UsageRollup.objects.filter(grain="hour", bucket__gte=MONTH, bucket__lt=NEXT_MONTH)
    known = hours.exclude(account_id=UNKNOWN).aggregate(r=Sum("revenue"))["r"]
    unknown = hours.filter(account_id=UNKNOWN).aggregate(r=Sum("revenue"))["r"]
    assert unknown > 0
    assert found.total.revenue == known
    assert found.total.unknown_revenue == unknown
    line = account_line(found, UNKNOWN)
    assert line.unknown_account
    assert (line.revenue, line.billed_minor) == (Decimal(0), None)
    assert sum(t.revenue for t in found.lines["tier"]) == known
    assert sum(day.revenue for day in found.days) == known  # on two backends, taken out once
    assert sum(day.unknown_revenue for day in found.days) == unknown
    summary = dict(_summary_of(found))
    assert summary["Revenue at list price"] == f"{_money(known, 'USD')} + unpriced"
    assert summary["Usage of unknown accounts, not invoiced"] == _money(unknown, "USD")


# 8. Another currency: its invoices, or a clear refusal ----------------------------------------


def test_a_currency_with_nothing_in_it_is_refused_with_a_message(
    month: Month, client: Client
) -> None:
    with pytest.raises(ReportError, match="nothing in EUR for 2025-03"):
        finance_report(period_start=MONTH, currency="EUR")
    client.force_login(User.objects.create_user("finance", is_staff=True))

    response = client.get("/billing/report/2025-03.html?currency=EUR")

    assert response.status_code == 404
    assert b"nothing in EUR for 2025-03" in response.content
    assert b"usage is rated in USD" in response.content


def test_a_currency_with_invoices_reports_them(month: Month, client: Client) -> None:
    invoice = Invoice.objects.create(
        account=month.acme,
        kind="credit_note",  # free of one-invoice-per-period; a document in EUR all the same
        period_start=MONTH,
        period_end=NEXT_MONTH,
        currency="EUR",
        amount=Decimal("-4.5"),
        total_minor=-450,
    )
    InvoiceLine.objects.create(
        invoice=invoice,
        item="credit",
        tier="premium",
        quantity=1,
        unit_price=Decimal("4.5"),
        amount=Decimal("-4.5"),
        amount_minor=-450,
        usage_from=MONTH,
        usage_to=NEXT_MONTH,
    )
    Invoice.objects.filter(pk=invoice.pk).update(
        status="finalised", number="TF-2025-EUR001", finalised_at=CLOSED
    )
    client.force_login(User.objects.create_user("finance", is_staff=True))

    response = client.get("/billing/report/2025-03.csv?currency=EUR")

    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    documents = [r for r in rows if r["dimension"] == "document"]
    assert [(r["key"], r["currency"], r["amount"]) for r in documents] == [
        ("TF-2025-EUR001", "EUR", "-4.50")
    ]
    html = client.get("/billing/report/2025-03.html?currency=EUR").content.decode()
    assert "No usage figures in EUR: usage is rated in USD" in html
