"""The staff console's pages (Django's test client; the browser tests cover the flows)."""

from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEntry
from billing.models import Invoice
from billing.services import invoices_close
from console.models import StaffToken
from console.tokens import staff_token_issue
from customers.models import Account
from metering.models import EnergyCalibration
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
    usage,
    usage_write,
)
from tests.console.api_support import tenant_create, token_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> tuple[User, Client]:
    user = User.objects.create_superuser("root", "root@example.com", "a long passphrase")
    client = Client()
    client.force_login(user)
    return user, client


def _page(model: type) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def test_every_model_has_a_page_that_opens_with_search(staff: tuple[User, Client]) -> None:
    tenant_create()
    _, client = staff
    for model, model_admin in admin.site._registry.items():
        query = "?q=x" if model_admin.search_fields else ""
        response = client.get(_page(model) + query)
        assert response.status_code == 200, (model.__name__, response.status_code)


def test_revoking_a_staff_token_in_the_console_stops_it_and_is_audited(
    staff: tuple[User, Client],
) -> None:
    user, client = staff
    issued = staff_token_issue(actor="test", user=user)
    api = token_client(issued.plaintext)
    assert api.get("/api/v1/accounts/").status_code == 200

    response = client.post(
        _page(StaffToken),
        {"action": "revoke_tokens", "_selected_action": [issued.token.pk]},
        follow=True,
    )
    assert b"1 token(s) revoked." in response.content
    assert api.get("/api/v1/accounts/").status_code == 401
    entry = AuditEntry.objects.get(action="revoke", object_type="console.stafftoken")
    assert entry.actor == "root"
    assert entry.before["revoked_at"] is None
    assert entry.after["revoked_at"] is not None
    assert "secret_hash" not in entry.after


def test_staff_set_a_tokens_scopes_in_the_console_and_it_is_audited(
    staff: tuple[User, Client],
) -> None:
    user, client = staff
    issued = staff_token_issue(actor="test", user=user)
    api = token_client(issued.plaintext)
    tenant = tenant_create()
    issue = {"account": tenant.account.pk}
    assert api.post("/api/v1/keys/", issue, format="json").status_code == 403  # read only

    page = reverse("admin:console_stafftoken_change", args=[issued.token.pk])
    assert client.post(page, {"scopes": ["read", "keys"]}).status_code == 302
    assert StaffToken.objects.get(pk=issued.token.pk).scopes == ["read", "keys"]
    entry = AuditEntry.objects.get(action="update", object_type="console.stafftoken")
    assert (entry.actor, entry.before["scopes"], entry.after["scopes"]) == (
        "root",
        ["read"],
        ["read", "keys"],
    )
    assert api.post("/api/v1/keys/", issue, format="json").status_code == 201


def test_a_staff_token_can_be_neither_added_nor_deleted_in_the_console(
    staff: tuple[User, Client],
) -> None:
    user, client = staff
    issued = staff_token_issue(actor="test", user=user)
    assert client.get(reverse("admin:console_stafftoken_add")).status_code == 403
    delete = reverse("admin:console_stafftoken_delete", args=[issued.token.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert StaffToken.objects.filter(pk=issued.token.pk).exists()


def test_the_audit_log_cannot_be_edited_or_deleted(staff: tuple[User, Client]) -> None:
    _, client = staff
    tenant_create()
    entry = AuditEntry.objects.create(
        actor="system", action="create", object_type="x", object_id="1"
    )
    change = reverse("admin:audit_auditentry_change", args=[entry.pk])
    delete = reverse("admin:audit_auditentry_delete", args=[entry.pk])
    assert client.post(change, {"actor": "someone else"}).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    entry.refresh_from_db()
    assert entry.actor == "system"


def test_staff_can_configure_a_backends_energy_model(staff: tuple[User, Client]) -> None:
    _, client = staff
    form = {
        "backend": "sim-a",
        "idle_watts": "440",
        "prefill_j_per_token": "0.05",
        "prefill_j_per_request": "0",
        "decode_watts": "300, 330, 390, 486",
        "decode_j_per_token": "0",
        "ttft_seconds": "0",
        "ttft_seconds_per_token": "0",
        "prefill_seconds": "0",
        "decode_step_seconds": "0",
        "decode_step_seconds_per_sequence": "0",
    }
    add = reverse("admin:metering_energycalibration_add")
    refused = client.post(add, {**form, "decode_watts": "300, -1"})
    assert b"Coefficients cannot be negative." in refused.content
    refused = client.post(add, {**form, "decode_watts": ",".join(["300"] * 10)})
    assert b"List contains 10 items, it should contain no more than 9." in refused.content
    assert not EnergyCalibration.objects.exists()

    assert client.post(add, form).status_code == 302
    calibration = EnergyCalibration.objects.get()
    assert (calibration.source, calibration.idle_watts) == ("configured", 440.0)
    assert calibration.decode_watts == [300, 330, 390, 486]
    assert AuditEntry.objects.filter(
        action="create", object_type="metering.energycalibration"
    ).exists()


def _billed_month() -> Account:
    """An account with usage in MONTH, priced by a book in force before it."""
    book_create(
        BookSpec(MONTH - timedelta(days=30), [PriceSpec("premium", "*", D(3), D(1), D(15))])
    )
    account = account_make("premium")
    usage_write(
        [
            usage(
                MONTH + timedelta(hours=1),
                account_id=account.pk,
                prompt=1_000_000,
                completion=100_000,
            )
        ]
    )
    return account


def test_staff_close_a_month_and_its_invoices_are_finalised_and_audited(
    staff: tuple[User, Client],
) -> None:
    _, client = staff
    account = _billed_month()
    close = reverse("admin:billing_invoice_close")
    assert b"Close a month" in client.get(_page(Invoice)).content

    still_open = client.post(close, {"month": f"{timezone.now():%Y-%m}"})
    assert b"is open until" in still_open.content
    assert b"past the last date" in client.post(close, {"month": "9999-12"}).content
    assert not Invoice.objects.exists()

    response = client.post(close, {"month": f"{MONTH:%Y-%m}"}, follow=True)
    assert b"1 invoice(s) finalised." in response.content
    invoice = Invoice.objects.get(account=account)
    assert (invoice.status, invoice.total_minor) == ("finalised", 300 + 150)
    entry = AuditEntry.objects.get(action="finalise", object_type="billing.invoice")
    assert entry.after["number"] == invoice.number


def test_staff_credit_an_invoice_by_lines_or_by_amount(staff: tuple[User, Client]) -> None:
    _, client = staff
    account = _billed_month()
    invoices_close(period_start=MONTH, now=NEXT_MONTH + timedelta(days=1))
    invoice = Invoice.objects.get(account=account)
    page = reverse("admin:billing_invoice_change", args=[invoice.pk])
    credit = reverse("admin:billing_invoice_credit_note", args=[invoice.pk])
    assert b"Issue a credit note" in client.get(page).content

    neither = client.post(credit, {"memo": "goodwill"})
    assert b"Credit either whole lines or an amount." in neither.content
    too_much = client.post(credit, {"memo": "goodwill", "amount": "1000"})
    assert b"within the invoice" in too_much.content
    assert not Invoice.objects.filter(kind="credit_note").exists()

    input_line = invoice.lines.get(item="input")
    client.post(credit, {"memo": "wrong input price", "lines": [input_line.pk]})
    client.post(credit, {"memo": "goodwill", "amount": "1.50"})
    notes = Invoice.objects.filter(kind="credit_note", corrects=invoice).order_by("pk")
    assert [(n.total_minor, n.status) for n in notes] == [(-300, "finalised"), (-150, "finalised")]
    assert AuditEntry.objects.filter(action="credit_note").count() == 2


def test_a_viewer_cannot_suspend_an_account_or_revoke_a_key_from_the_console() -> None:
    """The console's actions ask for the change permission, as the management API does."""
    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(codename__in=["view_account", "view_apikey"])
    )
    client = Client()
    client.force_login(viewer)
    tenant = tenant_create()

    client.post(
        _page(Account), {"action": "suspend_accounts", "_selected_action": [tenant.account.pk]}
    )
    listed = client.get(_page(Account)).content.decode()

    tenant.account.refresh_from_db()
    assert tenant.account.status == Account.Status.ACTIVE
    assert "suspend_accounts" not in listed
