"""API keys through the management API: the secret is shown once, then never again (P7)."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEntry
from console.models import StaffToken
from customers.keys import key_hash
from customers.models import ApiKey
from tests.console.api_support import (
    Tenant,
    assert_error,
    staff_client,
    tenant_create,
    token_client,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenant() -> Tenant:
    return tenant_create()


def _everything_readable(key_id: str) -> str:
    """Every response a staff user can get that mentions the key, and the audit log."""
    client = staff_client()
    pages = [
        client.get("/api/v1/keys/"),
        client.get(f"/api/v1/keys/{key_id}/"),
        client.get("/api/v1/audit-entries/"),
    ]
    entries = list(AuditEntry.objects.values("before", "after"))
    return "".join(page.content.decode() for page in pages) + json.dumps(entries)


def test_an_issued_key_is_shown_once_and_works(tenant: Tenant) -> None:
    staff = staff_client()
    response = staff.post(
        "/api/v1/keys/", {"account": tenant.account.pk, "name": "ci"}, format="json"
    )
    assert response.status_code == 201
    issued = response.json()
    key = issued["key"]
    assert key.startswith(f"tf_{issued['key_id']}_")
    assert token_client(key).get("/api/v1/me/").json()["key"]["key_id"] == issued["key_id"]
    stored = ApiKey.objects.get(key_id=issued["key_id"])
    assert stored.secret_hash == key_hash(key)
    readable = _everything_readable(issued["key_id"])
    assert key not in readable
    assert key.split("_", 2)[2] not in readable
    assert stored.secret_hash not in readable
    assert "key" not in staff.get(f"/api/v1/keys/{issued['key_id']}/").json()


def test_rotating_gives_a_new_secret_once_and_stops_the_old_key(tenant: Tenant) -> None:
    staff = staff_client()
    response = staff.post(f"/api/v1/keys/{tenant.api_key.key_id}/rotate/")
    assert response.status_code == 201
    new = response.json()
    assert new["key_id"] != tenant.api_key.key_id
    assert (new["account"], new["name"]) == (tenant.account.pk, "main")
    assert token_client(new["key"]).get("/api/v1/me/").status_code == 200
    assert_error(token_client(tenant.key).get("/api/v1/me/"), 401, "authentication_failed")
    assert new["key"] not in _everything_readable(new["key_id"])
    by_staff = AuditEntry.objects.filter(object_type="customers.apikey").exclude(actor="system")
    actions = sorted(by_staff.values_list("action"))
    assert actions == [("issue",), ("rotate",)]


def test_a_revoked_key_gets_401_in_the_apis_error_format(tenant: Tenant) -> None:
    response = staff_client().post(f"/api/v1/keys/{tenant.api_key.key_id}/revoke/")
    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    error = assert_error(tenant.client().get("/api/v1/me/usage/"), 401, "authentication_failed")
    assert error["message"] == "This API key has been revoked."
    assert error["type"] == "authentication_error"


def test_an_expired_key_gets_401(tenant: Tenant) -> None:
    ApiKey.objects.filter(pk=tenant.api_key.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    error = assert_error(tenant.client().get("/api/v1/me/"), 401, "authentication_failed")
    assert error["message"] == "This API key has expired."


def test_a_key_with_a_changed_secret_gets_401(tenant: Tenant) -> None:
    tampered = tenant.key[:-1] + ("A" if tenant.key[-1] != "A" else "B")
    assert_error(token_client(tampered).get("/api/v1/me/"), 401, "authentication_failed")
    assert_error(token_client("tf_garbage").get("/api/v1/me/"), 401, "authentication_failed")


def test_a_suspended_accounts_key_gets_403(tenant: Tenant) -> None:
    staff_client().post(f"/api/v1/accounts/{tenant.account.pk}/suspend/")
    assert_error(tenant.client().get("/api/v1/me/"), 403, "account_inactive")


def test_a_key_cannot_be_issued_already_expired(tenant: Tenant) -> None:
    body = {"account": tenant.account.pk, "expires_at": "2001-01-01T00:00:00Z"}
    error = assert_error(staff_client().post("/api/v1/keys/", body, format="json"), 400)
    assert error["param"] == "expires_at"
    assert ApiKey.objects.filter(account=tenant.account).count() == 1


def test_issuing_for_an_unknown_account_is_a_400() -> None:
    response = staff_client().post("/api/v1/keys/", {"account": 10**12}, format="json")
    error = assert_error(response, 400)
    assert error["param"] == "account"
    assert not ApiKey.objects.exists()


def test_a_revoked_staff_token_gets_401() -> None:
    client = staff_client()
    StaffToken.objects.update(revoked_at=timezone.now())
    error = assert_error(client.get("/api/v1/accounts/"), 401, "authentication_failed")
    assert error["message"] == "This staff token has been revoked."
