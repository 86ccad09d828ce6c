"""The console's billing pages: a book in force and a finalised invoice cannot be changed there;
invoices read as money ("$13.41", the exact amount a hover away and on their own page); a
credit note is an amount to credit, typed as a positive number."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from audit.models import AuditEntry
from billing.margins import margins_run
from billing.models import CostModel, Invoice
from billing.rollups import rollups_run
from billing.services import invoices_close
from catalogue.models import PriceBook
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
PRICES = [PriceSpec("premium", "*", Decimal(1), Decimal("0.1"), Decimal(2))]


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("finance", password="not-used"))
    return client


def book_form(book: PriceBook, **changes: str) -> dict[str, str]:
    """The change form as the page posts it, with its (empty) price and plan inlines."""
    inlines = {
        f"{prefix}-{field}": "0"
        for prefix in ("prices", "plans")
        for field in ("TOTAL_FORMS", "INITIAL_FORMS")
    }
    return {
        "name": book.name,
        "currency": book.currency,
        "effective_from_0": f"{book.effective_from:%Y-%m-%d}",
        "effective_from_1": f"{book.effective_from:%H:%M:%S}",
        **inlines,
        **changes,
    }


def test_a_book_in_force_is_shown_but_not_changed(staff: Client) -> None:
    book = book_create(BookSpec(MONTH, PRICES))
    page = f"/admin/catalogue/pricebook/{book.pk}/change/"

    assert staff.get(page).status_code == 200
    assert staff.post(page, book_form(book, name="cheaper")).status_code == 403
    assert (
        staff.post(f"/admin/catalogue/pricebook/{book.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    book.refresh_from_db()
    assert book.name != "cheaper"


def test_a_book_not_in_force_yet_can_still_change(staff: Client) -> None:
    book = book_create(BookSpec(timezone.now() + timedelta(days=3), PRICES))

    response = staff.post(
        f"/admin/catalogue/pricebook/{book.pk}/change/",
        book_form(book, name="next month"),
    )

    assert response.status_code == 302
    book.refresh_from_db()
    assert book.name == "next month"


def test_a_book_not_in_force_yet_is_not_moved_into_the_past(staff: Client) -> None:
    book = book_create(BookSpec(timezone.now() + timedelta(days=3), PRICES))
    start = book.effective_from

    response = staff.post(
        f"/admin/catalogue/pricebook/{book.pk}/change/",
        book_form(book, effective_from_0=f"{MONTH:%Y-%m-%d}"),
    )

    assert response.status_code == 200
    assert "can only move to a later start" in response.content.decode()
    book.refresh_from_db()
    assert book.effective_from == start


def test_a_cost_model_in_force_is_read_only(staff: Client) -> None:
    cost = CostModel.objects.create(
        backend="gpu-a",
        effective_from=MONTH,
        electricity_per_kwh=Decimal("0.2"),
        gpu_cost_per_hour=Decimal(10),
    )
    response = staff.post(f"/admin/billing/costmodel/{cost.pk}/change/", {"pue": "2"})
    assert response.status_code == 403


def test_invoices_are_shown_and_never_edited_there(staff: Client) -> None:
    book_create(BookSpec(MONTH - timedelta(days=40), PRICES, {"premium": (Decimal(5), 0)}))
    account = account_make("premium")
    invoices_close(period_start=MONTH, now=NEXT_MONTH + timedelta(hours=3))
    invoice = Invoice.objects.get(account=account)

    page = staff.get(f"/admin/billing/invoice/{invoice.pk}/change/")
    assert page.status_code == 200
    assert invoice.number is not None and invoice.number in page.content.decode()
    assert staff.post(f"/admin/billing/invoice/{invoice.pk}/change/", {}).status_code == 403
    assert staff.get("/admin/billing/invoice/add/").status_code == 403


@pytest.fixture
def invoice() -> Invoice:
    """A finalised invoice of 13,406,000 input tokens at $1 per million: $13.406 exactly."""
    book_create(BookSpec(MONTH - timedelta(days=40), PRICES))
    account = account_make("premium")
    usage_write(
        [usage(MONTH + timedelta(days=2), account_id=account.pk, prompt=13_406_000, completion=0)]
    )
    invoices_close(period_start=MONTH, now=NEXT_MONTH + timedelta(hours=3))
    return Invoice.objects.get(account=account)


def test_an_invoice_reads_as_money_with_the_exact_amount_at_hand(
    staff: Client, invoice: Invoice
) -> None:
    listed = staff.get("/admin/billing/invoice/").content.decode()
    assert '<span title="Exact: $13.406">$13.41</span>' in listed
    assert "Total minor" not in listed and ">Total<" in listed

    page = staff.get(f"/admin/billing/invoice/{invoice.pk}/change/").content.decode()
    assert "$13.41" in page and "$13.406" in page
    assert ">1341<" not in page and "13.406000000000" not in page
    assert "$1.00 per 1M tokens" in page  # the line's unit price
    assert "13,406,000" in page  # its quantity


def test_staff_credit_an_amount_typed_as_a_positive_number(staff: Client, invoice: Invoice) -> None:
    url = f"/admin/billing/invoice/{invoice.pk}/credit-note/"
    assert "at most $13.41 (what is left to credit" in staff.get(url).content.decode()

    issued = staff.post(url, {"memo": "outage", "amount": "4.50"}, follow=True)

    note = Invoice.objects.get(corrects=invoice)
    assert (note.total_minor, note.status) == (-450, "finalised")
    assert f"Credit note {note} issued." in issued.content.decode()
    assert AuditEntry.objects.filter(action="credit_note").count() == 1
    assert "at most $8.91 (what is left" in staff.get(url).content.decode()


@pytest.mark.parametrize(
    ("amount", "says"),
    [
        ("20", "$20.00 is more than is left to credit: enter at most $13.41"),
        ("-5", "Enter the amount to credit as a positive number"),
        ("0", "Enter the amount to credit as a positive number"),
        ("1.505", "USD amounts have at most 2 decimal places."),
    ],
)
def test_a_credit_the_invoice_cannot_take_says_what_to_enter(
    staff: Client, invoice: Invoice, amount: str, says: str
) -> None:
    refused = staff.post(
        f"/admin/billing/invoice/{invoice.pk}/credit-note/", {"memo": "x", "amount": amount}
    )

    assert refused.status_code == 200
    assert says in refused.content.decode()
    assert "must be negative" not in refused.content.decode()
    assert not Invoice.objects.filter(corrects=invoice).exists()
    assert not AuditEntry.objects.filter(action="credit_note").exists()


def test_once_credited_in_full_nothing_more_is_taken(staff: Client, invoice: Invoice) -> None:
    url = f"/admin/billing/invoice/{invoice.pk}/credit-note/"
    staff.post(url, {"memo": "refund", "lines": [invoice.lines.get().pk]})

    again = staff.post(url, {"memo": "again", "amount": "1"}).content.decode()

    assert f"Nothing is left to credit on {invoice}" in again
    assert Invoice.objects.filter(corrects=invoice).count() == 1


def test_rollups_margins_and_costs_read_as_money(staff: Client) -> None:
    book_create(BookSpec(MONTH - timedelta(days=40), PRICES))
    cost_model_create("gpu-a", effective_from=MONTH - timedelta(days=1))
    account = account_make("premium")
    at = MONTH + timedelta(days=2)
    usage_write([usage(at, account_id=account.pk, prompt=2_600, completion=0, energy=900.0)])
    rollups_run(now=NEXT_MONTH + timedelta(hours=3))
    margins_run(now=NEXT_MONTH + timedelta(hours=3))

    rollups = staff.get("/admin/billing/usagerollup/").content.decode()
    margins = staff.get("/admin/billing/margin/").content.decode()

    # 2,600 tokens at $1 per million: $0.0026, not "$0.00" and not "0.002600000000".
    assert '<span title="Exact: $0.0026">$0.0026</span>' in rollups
    assert '<span title="Exact: $0.0026">$0.0026</span>' in margins
    assert "0.002600000000" not in rollups + margins and "E-12" not in rollups + margins
    costs = staff.get("/admin/billing/costmodel/").content.decode()
    assert ">$0.20<" in costs and ">$12.00<" in costs  # per kWh, per GPU hour
