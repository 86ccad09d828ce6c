"""Finalising a month's invoices and issuing credit notes through the API, audited."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from audit.models import AuditEntry
from billing.models import Invoice
from catalogue.models import Price, PriceBook
from customers.services import project_default
from tests.console.api_support import assert_error, staff_client, tenant_create, usage_create

pytestmark = pytest.mark.django_db

# A month long closed (and its grace window with it), priced by a book in force before it.
MONTH = datetime(2025, 3, 1, tzinfo=UTC)


def _priced_usage() -> Invoice:
    """A premium account's month of usage: 2M output tokens at 2 per million."""
    book = PriceBook.objects.create(name="list", effective_from=datetime(2025, 1, 1, tzinfo=UTC))
    Price.objects.create(
        price_book=book,
        tier="premium",
        model="*",
        input_per_million=Decimal(0),
        cached_input_per_million=Decimal(0),
        output_per_million=Decimal(2),
    )
    tenant = tenant_create()
    usage_create(tenant.account, at=MONTH.replace(day=10), prompt=0, completion=2_000_000)
    return tenant.invoice


def test_closing_a_month_finalises_and_numbers_its_invoices_once() -> None:
    _priced_usage()
    staff = staff_client()
    closed = staff.post(
        "/api/v1/invoices/close/", {"period_start": "2025-03-15T00:00:00Z"}, format="json"
    )
    assert closed.status_code == 200, closed.content
    assert closed.json()["finalised"] == 1
    assert closed.json()["period_start"] == "2025-03-01T00:00:00Z"
    invoice = Invoice.objects.get(period_start=MONTH)
    assert invoice.status == Invoice.Status.FINALISED and invoice.number
    assert invoice.total_minor == 400
    entry = AuditEntry.objects.get(action="finalise")
    assert (entry.object_type, entry.object_id) == ("billing.invoice", str(invoice.pk))
    assert entry.before is None
    assert entry.after is not None
    assert entry.after["number"] == invoice.number
    assert [line["amount_minor"] for line in entry.after["lines"]] == [400]
    again = staff.post(
        "/api/v1/invoices/close/", {"period_start": "2025-03-01T00:00:00Z"}, format="json"
    )
    assert again.json()["finalised"] == 0
    assert AuditEntry.objects.filter(action="finalise").count() == 1


@pytest.mark.parametrize("period_start", ["2099-01-01", "9999-12-31T23:00:00Z"])
def test_a_month_still_open_cannot_be_closed(period_start: str) -> None:
    response = staff_client().post(
        "/api/v1/invoices/close/", {"period_start": period_start}, format="json"
    )
    assert_error(response, 400, "invoice_refused")
    assert not Invoice.objects.exists()


def test_a_credit_note_corrects_a_finalised_invoice() -> None:
    tenant = tenant_create()
    staff = staff_client()
    url = f"/api/v1/invoices/{tenant.invoice.pk}/credit-note/"
    response = staff.post(url, {"memo": "outage", "amount_minor": 250}, format="json")
    assert response.status_code == 201, response.content
    note = response.json()
    assert (note["kind"], note["corrects"], note["total_minor"]) == (
        "credit_note",
        tenant.invoice.pk,
        -250,
    )
    assert note["status"] == "finalised" and note["number"]
    assert [line["amount_minor"] for line in note["lines"]] == [-250]
    entry = AuditEntry.objects.get(action="credit_note")
    assert entry.object_id == str(note["id"]) and entry.after["memo"] == "outage"
    own = tenant.client().get("/api/v1/me/invoices/").json()["results"]
    assert sorted(invoice["kind"] for invoice in own) == ["credit_note", "invoice"]


def test_a_credit_note_may_reverse_whole_lines() -> None:
    tenant = tenant_create()
    line = tenant.invoice.lines.get()
    response = staff_client().post(
        f"/api/v1/invoices/{tenant.invoice.pk}/credit-note/",
        {"memo": "wrong model", "lines": [line.pk]},
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["total_minor"] == -line.amount_minor


@pytest.mark.parametrize(
    "body",
    [
        {"memo": "x", "amount_minor": 999_999},  # more than the invoice's total
        {"memo": "x"},
        {"memo": "x", "amount_minor": 1, "lines": [1]},
        {"memo": "x", "lines": [10**12]},
    ],
)
def test_bad_credit_notes_are_400_and_issue_nothing(body: dict[str, object]) -> None:
    tenant = tenant_create()
    response = staff_client().post(
        f"/api/v1/invoices/{tenant.invoice.pk}/credit-note/", body, format="json"
    )
    assert_error(response, 400)
    assert not Invoice.objects.filter(kind=Invoice.Kind.CREDIT_NOTE).exists()
    assert not AuditEntry.objects.filter(action="credit_note").exists()


def test_a_draft_cannot_be_credited() -> None:
    tenant = tenant_create()
    response = staff_client().post(
        f"/api/v1/invoices/{tenant.draft.pk}/credit-note/",
        {"memo": "x", "amount_minor": 1},
        format="json",
    )
    assert_error(response, 400, "invoice_refused")


def test_invoices_carry_their_totals_as_people_read_them_beside_the_exact_fields() -> None:
    tenant = tenant_create()
    staff = staff_client()

    (listed,) = [
        row
        for row in staff.get("/api/v1/invoices/").json()["results"]
        if row["id"] == tenant.invoice.pk
    ]
    detail = staff.get(f"/api/v1/invoices/{tenant.invoice.pk}/").json()

    assert (listed["total_minor"], listed["amount"], listed["total_display"]) == (
        1250,
        "12.500000000000",
        "$12.50",
    )
    assert [(line["amount_minor"], line["amount_display"]) for line in detail["lines"]] == [
        (1250, "$12.50")
    ]


def test_a_credit_for_more_than_is_left_says_how_much_may_be_credited() -> None:
    tenant = tenant_create()
    staff = staff_client()
    url = f"/api/v1/invoices/{tenant.invoice.pk}/credit-note/"
    staff.post(url, {"memo": "outage", "amount_minor": 250}, format="json")

    refused = staff.post(url, {"memo": "again", "amount_minor": 1001}, format="json")
    negative = staff.post(url, {"memo": "again", "amount_minor": -5}, format="json")

    message = assert_error(refused, 400, "invoice_refused")["message"]
    assert "enter at most $10.00" in message and "`amount_minor` at most 1000" in message
    assert "positive number" in assert_error(negative, 400)["message"]
    assert Invoice.objects.filter(corrects=tenant.invoice).count() == 1


def test_invoice_lines_name_the_project_they_bill() -> None:
    _priced_usage()
    staff = staff_client()
    staff.post("/api/v1/invoices/close/", {"period_start": "2025-03-01T00:00:00Z"}, format="json")
    invoice = Invoice.objects.get(period_start=MONTH)
    default = project_default(account=invoice.account)

    detail = staff.get(f"/api/v1/invoices/{invoice.pk}/").json()
    assert [(line["project"], line["project_name"]) for line in detail["lines"]] == [
        (default.pk, default.name)
    ]
