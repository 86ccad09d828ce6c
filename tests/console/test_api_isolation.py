"""Tenant isolation and staff rights on every endpoint of the API (promise P7).

The endpoints are read from the OpenAPI schema, so a new endpoint is covered the day it is
added. Path parameters name account B's objects: whoever is refused must not reach them.
"""

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from audit.models import AuditEntry
from billing.models import Invoice
from customers.models import Account, ApiKey
from tests.console.api_support import (
    Tenant,
    assert_error,
    is_staff_operation,
    operation_url,
    schema_operations,
    send,
    staff_client,
    tenant_create,
)

pytestmark = pytest.mark.django_db


OPERATIONS = schema_operations()
STAFF = [op for op in OPERATIONS if is_staff_operation(op[0])]
OWN = [op for op in OPERATIONS if op[0].startswith("/api/v1/me/")]


@pytest.fixture
def a() -> Tenant:
    return tenant_create()


@pytest.fixture
def b() -> Tenant:
    return tenant_create()


def _untouched(b: Tenant) -> None:
    by_staff = AuditEntry.objects.exclude(actor="system")  # not the tenants' creation
    assert not by_staff.exclude(object_type="console.stafftoken").exists()
    assert Account.objects.get(pk=b.account.pk).status == Account.Status.ACTIVE
    assert ApiKey.objects.get(pk=b.api_key.pk).revoked_at is None
    assert Invoice.objects.filter(account=b.account).count() == 2


def test_the_schema_lists_every_kind_of_endpoint() -> None:
    paths = {path for path, _ in OPERATIONS}
    for expected in (
        "/api/v1/accounts/{id}/suspend/",
        "/api/v1/keys/{key_id}/rotate/",
        "/api/v1/backends/{id}/disable/",
        "/api/v1/usage/",
        "/api/v1/me/",
        "/api/v1/me/usage/",
        "/api/v1/me/invoices/{id}/",
        "/api/v1/me/keys/{key_id}/revoke/",
    ):
        assert expected in paths


@pytest.mark.parametrize(("path", "method"), STAFF)
def test_anonymous_callers_are_refused_by_the_staff_api(path: str, method: str, b: Tenant) -> None:
    response = send(APIClient(), method, operation_url(path, b))
    assert_error(response, 401, "not_authenticated")
    _untouched(b)


@pytest.mark.parametrize(("path", "method"), STAFF)
def test_signed_in_non_staff_users_are_refused_by_the_staff_api(
    path: str, method: str, b: Tenant
) -> None:
    client = APIClient()
    client.force_login(User.objects.create_user("someone"))
    response = send(client, method, operation_url(path, b))
    assert_error(response, 403, "permission_denied")
    _untouched(b)


@pytest.mark.parametrize(("path", "method"), STAFF)
def test_an_accounts_api_key_does_not_open_the_staff_api(
    path: str, method: str, a: Tenant, b: Tenant
) -> None:
    response = send(a.client(), method, operation_url(path, b))
    assert_error(response, 401, "not_authenticated")
    _untouched(b)


@pytest.mark.parametrize(("path", "method"), OWN)
def test_self_serve_needs_an_api_key(path: str, method: str, b: Tenant) -> None:
    assert_error(send(APIClient(), method, operation_url(path, b)), 401, "not_authenticated")
    _untouched(b)


@pytest.mark.parametrize(("path", "method"), OWN)
def test_a_staff_token_is_not_an_api_key(path: str, method: str, b: Tenant) -> None:
    assert_error(send(staff_client(), method, operation_url(path, b)), 401, "authentication_failed")
    _untouched(b)


@pytest.mark.parametrize(("path", "method"), [op for op in OWN if "{" in op[0]])
def test_a_key_holder_cannot_reach_another_accounts_objects(
    path: str, method: str, a: Tenant, b: Tenant
) -> None:
    assert_error(send(a.client(), method, operation_url(path, b)), 404, "not_found")
    _untouched(b)


@pytest.mark.parametrize(("path", "method"), [op for op in OWN if "{" not in op[0]])
def test_a_key_holders_lists_hold_only_its_own_objects(
    path: str, method: str, a: Tenant, b: Tenant
) -> None:
    response = send(a.client(), method, operation_url(path, b))
    assert response.status_code == 200
    text = response.content.decode()
    assert b.account.name not in text
    assert b.api_key.key_id not in text
    assert b.invoice.number not in text
    assert f'"account":{b.account.pk},' not in text.replace(" ", "")


def test_a_key_holder_sees_its_own_finalised_invoices_only(a: Tenant, b: Tenant) -> None:
    listed = a.client().get("/api/v1/me/invoices/").json()["results"]
    assert [invoice["id"] for invoice in listed] == [a.invoice.pk]
    assert_error(a.client().get(f"/api/v1/me/invoices/{a.draft.pk}/"), 404)
    detail = a.client().get(f"/api/v1/me/invoices/{a.invoice.pk}/").json()
    assert detail["number"] == a.invoice.number
    assert [line["amount_minor"] for line in detail["lines"]] == [1250]


def test_a_key_holder_revokes_its_own_key_and_is_recorded_as_the_actor(a: Tenant) -> None:
    spare = a.client()
    other = tenant_create()
    response = spare.post(f"/api/v1/me/keys/{a.api_key.key_id}/revoke/")
    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    entry = AuditEntry.objects.exclude(actor="system").get()  # not the tenants' creation
    assert (entry.actor, entry.actor_user_id, entry.action) == (
        f"api-key:{a.api_key.key_id}",
        None,
        "revoke",
    )
    assert_error(a.client().get("/api/v1/me/"), 401, "authentication_failed")
    assert ApiKey.objects.get(pk=other.api_key.pk).revoked_at is None


def test_the_me_endpoint_describes_the_callers_own_account(a: Tenant, b: Tenant) -> None:
    me = a.client().get("/api/v1/me/").json()
    assert me["account"]["id"] == a.account.pk
    assert me["key"]["key_id"] == a.api_key.key_id
    assert me["tier"] == "premium"


def test_a_staff_user_who_loses_staff_rights_loses_the_api() -> None:
    client = staff_client()
    assert client.get("/api/v1/accounts/").status_code == 200
    User.objects.filter(is_staff=True).update(is_staff=False)
    assert_error(client.get("/api/v1/accounts/"), 403, "permission_denied")


def test_staff_may_sign_in_with_a_session() -> None:
    client = APIClient()
    client.force_login(User.objects.create_user("ops", is_staff=True, is_superuser=True))
    assert client.get("/api/v1/accounts/").status_code == 200
