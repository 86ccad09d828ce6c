"""The console's billing pages: a book in force and a finalised invoice cannot be changed there."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from billing.models import CostModel, Invoice
from billing.services import invoices_close
from catalogue.models import PriceBook
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
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
