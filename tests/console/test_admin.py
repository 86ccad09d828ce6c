"""The staff console's pages (Django's test client; the browser tests cover the flows)."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from console.models import AuditEntry, StaffToken
from console.tokens import staff_token_issue
from metering.models import EnergyCalibration
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


def test_the_audit_log_cannot_be_edited_or_deleted(staff: tuple[User, Client]) -> None:
    _, client = staff
    tenant_create()
    entry = AuditEntry.objects.create(
        actor="system", action="create", object_type="x", object_id="1"
    )
    change = reverse("admin:console_auditentry_change", args=[entry.pk])
    delete = reverse("admin:console_auditentry_delete", args=[entry.pk])
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
        "decode_watts": "300",
        "decode_j_per_token": "0.2",
        "ttft_seconds": "0",
        "ttft_seconds_per_token": "0",
        "prefill_seconds": "0",
    }
    add = reverse("admin:metering_energycalibration_add")
    refused = client.post(add, {**form, "decode_watts": "-1"})
    assert b"Coefficients cannot be negative." in refused.content
    assert not EnergyCalibration.objects.exists()

    assert client.post(add, form).status_code == 302
    calibration = EnergyCalibration.objects.get()
    assert (calibration.source, calibration.idle_watts) == ("configured", 440.0)
    assert AuditEntry.objects.filter(
        action="create", object_type="metering.energycalibration"
    ).exists()
