"""Staff rights in the management API: the user's Django model permissions for each action,
and a staff token's scopes on top of them (issue 12).

The operations come from the OpenAPI schema, so a new endpoint is covered the day it is added.
"""

import io
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.test import override_settings
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from audit.models import AuditEntry
from console.models import Scope, StaffToken, scopes_all
from customers.models import ApiKey, Tier
from tests.console.api_support import (
    Tenant,
    assert_error,
    is_staff_operation,
    operation_url,
    schema_operations,
    send,
    staff_token,
    superuser_create,
    tenant_create,
    token_client,
)

pytestmark = pytest.mark.django_db

STAFF = [op for op in schema_operations() if is_staff_operation(op[0])]
READS = [op for op in STAFF if op[1] == "GET"]
WRITES = [op for op in STAFF if op[1] != "GET"]
# The apps whose objects the management API shows.
APPS = ("customers", "catalogue", "fleet", "audit", "metering", "billing", "console")


@pytest.fixture
def b() -> Tenant:
    return tenant_create()


def _staff(*codenames: str) -> User:
    user = User.objects.create_user(f"staff-{len(codenames)}", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def _viewer() -> User:
    """A staff user who may view everything and change nothing."""
    user = User.objects.create_user("viewer", is_staff=True)
    views = Permission.objects.filter(
        codename__startswith="view_", content_type__app_label__in=APPS
    )
    user.user_permissions.add(*views)
    return user


def _token(user: User, scopes: list[str] | None = None) -> APIClient:
    return token_client(staff_token(user, scopes_all() if scopes is None else scopes))


def _session(user: User) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _nothing_written(b: Tenant) -> None:
    by_staff = AuditEntry.objects.exclude(actor="system")  # not the tenants' creation
    assert not by_staff.exclude(object_type="console.stafftoken").exists()
    assert ApiKey.objects.filter(account=b.account).count() == 1


@pytest.mark.parametrize("credential", ["session", "token"])
@pytest.mark.parametrize(("path", "method"), STAFF)
def test_staff_without_permissions_are_refused_everywhere(
    path: str, method: str, credential: str, b: Tenant
) -> None:
    user = _staff()
    client = _session(user) if credential == "session" else _token(user)
    assert_error(send(client, method, operation_url(path, b)), 403, "permission_denied")
    _nothing_written(b)


def test_staff_without_permissions_cannot_issue_a_key_for_a_tenant(b: Tenant) -> None:
    """The audit's case: is_staff alone issued (and showed) another tenant's key."""
    client = _token(_staff())
    response = client.post("/api/v1/keys/", {"account": b.account.pk}, format="json")
    assert_error(response, 403, "permission_denied")
    assert "key" not in response.json()
    _nothing_written(b)


@pytest.mark.parametrize(("path", "method"), READS)
def test_a_viewer_reads_everything(path: str, method: str, b: Tenant) -> None:
    response = send(_token(_viewer()), method, operation_url(path, b))
    assert response.status_code not in (401, 403), response.content[:300]


@pytest.mark.parametrize(("path", "method"), WRITES)
def test_a_viewer_changes_nothing(path: str, method: str, b: Tenant) -> None:
    response = send(_token(_viewer()), method, operation_url(path, b))
    assert_error(response, 403, "permission_denied")
    _nothing_written(b)


def test_a_permission_opens_exactly_its_action(b: Tenant) -> None:
    client = _token(_staff("add_apikey"))
    issued = client.post("/api/v1/keys/", {"account": b.account.pk}, format="json")
    assert issued.status_code == 201
    key_id = issued.json()["key_id"]
    assert_error(client.post(f"/api/v1/keys/{key_id}/revoke/"), 403, "permission_denied")
    assert_error(client.get("/api/v1/keys/"), 403, "permission_denied")


@pytest.mark.parametrize(("path", "method"), WRITES)
def test_a_read_only_token_changes_nothing_even_for_a_superuser(
    path: str, method: str, b: Tenant
) -> None:
    client = _token(superuser_create(), [Scope.READ])
    assert_error(send(client, method, operation_url(path, b)), 403, "insufficient_scope")
    _nothing_written(b)


def test_a_read_only_token_reads(b: Tenant) -> None:
    client = _token(superuser_create(), [Scope.READ])
    assert client.get(f"/api/v1/keys/{b.api_key.key_id}/").status_code == 200
    response = client.post("/api/v1/keys/", {"account": b.account.pk}, format="json")
    assert_error(response, 403, "insufficient_scope")


def test_a_keys_token_issues_rotates_and_revokes_keys_but_changes_no_tier(b: Tenant) -> None:
    client = _token(superuser_create(), [Scope.KEYS])
    issued = client.post("/api/v1/keys/", {"account": b.account.pk}, format="json")
    assert issued.status_code == 201
    rotated = client.post(f"/api/v1/keys/{issued.json()['key_id']}/rotate/")
    assert rotated.status_code == 201
    assert client.post(f"/api/v1/keys/{rotated.json()['key_id']}/revoke/").status_code == 200

    tier = b.account.tier
    response = client.patch(f"/api/v1/tiers/{tier.pk}/", {"priority": 9}, format="json")
    assert_error(response, 403, "insufficient_scope")
    assert Tier.objects.get(pk=tier.pk).priority == tier.priority
    assert_error(client.get("/api/v1/keys/"), 403, "insufficient_scope")  # no `read`


@pytest.mark.parametrize(("path", "method"), STAFF)
def test_a_superuser_with_every_scope_may_do_everything(path: str, method: str, b: Tenant) -> None:
    client = _token(superuser_create())
    response = send(client, method, operation_url(path, b))
    assert response.status_code not in (401, 403), response.content[:300]


@override_settings(CONSOLE_REQUIRE_TWO_FACTOR=True)
def test_a_session_needs_two_factor_where_the_console_requires_it() -> None:
    client = _session(superuser_create())
    assert_error(client.get("/api/v1/accounts/"), 403, "two_factor_required")


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)
    return schema


def test_the_schema_names_the_scope_and_permissions_of_every_staff_operation() -> None:
    paths = _schema()["paths"]
    for path, method in STAFF:
        operation = paths[path][method.lower()]
        assert operation["x-required-scope"] in Scope.values, (path, method)
        assert operation["x-required-permissions"], (path, method)
    issue = paths["/api/v1/keys/"]["post"]
    assert (issue["x-required-scope"], issue["x-required-permissions"]) == (
        "keys",
        ["customers.add_apikey"],
    )
    assert "`keys` token scope" in issue["description"]
    close = paths["/api/v1/invoices/close/"]["post"]
    assert (close["x-required-scope"], close["x-required-permissions"]) == (
        "billing",
        ["billing.change_invoice"],
    )
    assert "x-required-scope" not in paths["/api/v1/me/"]["get"]


def test_the_schema_describes_the_scopes_of_staff_tokens() -> None:
    description = _schema()["components"]["securitySchemes"]["staffToken"]["description"]
    for scope in Scope.values:
        assert f"`{scope}:" in description


def test_the_command_issues_a_token_with_the_scopes_asked_for() -> None:
    User.objects.create_user("ops", is_staff=True)
    quiet = {"stdout": io.StringIO(), "stderr": io.StringIO()}
    call_command("staff_token", "ops", "--scope", "keys", "--scope", "read", **quiet)
    call_command("staff_token", "ops", **quiet)
    first, second = StaffToken.objects.order_by("pk")
    assert first.scopes == ["read", "keys"]
    assert second.scopes == ["read"]
    with pytest.raises(CommandError):
        call_command("staff_token", "ops", "--scope", "everything", **quiet)
