"""No member of one account reaches another's data through /api/v1/org/ (issue 17, BOLA),
and only a live member token opens it.

The routes are read from the URLconf itself, so a route added tomorrow is covered (or fails
here for want of an object to name) the day it is added. Path parameters name account B's
objects; A's owner, who may do everything in A, must get the 404 a missing id gets, on every
verb, and B must be exactly as it was.
"""

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEntry
from customers.members import invitation_create, member_remove, member_token_issue
from customers.models import (
    ApiKey,
    Invitation,
    Member,
    MemberToken,
    Project,
    WebhookDelivery,
    WebhookEndpoint,
)
from customers.services import api_key_issue, api_key_revoke
from customers.webhooks import webhook_endpoint_create
from tests.console.api_support import assert_error, schema_operations, send, staff_client
from tests.console.org_support import Org, org_create

pytestmark = pytest.mark.django_db

_METHODS = ("get", "post", "put", "patch", "delete")


def _walk(patterns: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for pattern in patterns:
        route = prefix + str(pattern.pattern).lstrip("^").rstrip("$")
        if isinstance(pattern, URLResolver):
            found += _walk(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            found.append((route, pattern.callback))
    return found


def _methods(callback: Any) -> list[str]:
    actions = getattr(callback, "actions", None)
    if actions is not None:  # a viewset's route: the methods its router mapped
        return sorted(method.upper() for method in actions if method in _METHODS)
    view = callback.view_class
    return sorted(method.upper() for method in _METHODS if hasattr(view, method))


def org_routes() -> list[tuple[str, str]]:
    """Every (route, METHOD) under /api/v1/org/, as the URLconf has them."""
    return sorted(
        (f"/{route}", method)
        for route, callback in _walk(get_resolver().url_patterns)
        if route.startswith("api/v1/org/")
        for method in _methods(callback)
    )


ROUTES = org_routes()
DETAIL = [(route, method) for route, method in ROUTES if "(?P<" in route]
LISTS = [(route, method) for route, method in ROUTES if "(?P<" not in route]


def _ids(b: Org) -> dict[str, Any]:
    """What names one of B's objects, by the first part of the route after /api/v1/org/."""
    invitation = Invitation.objects.filter(account=b.tenant.account, accepted_at=None).get()
    return {
        "projects": b.project.pk,
        "keys": b.tenant.api_key.key_id,
        "members": b.members["developer"].pk,
        "invitations": invitation.pk,
        "tokens": MemberToken.objects.get(member=b.members["owner"]).token_id,
        "webhooks": WebhookEndpoint.objects.get(account=b.tenant.account).pk,
        "webhook-deliveries": WebhookDelivery.objects.get(endpoint__account=b.tenant.account).pk,
    }


def _url(route: str, b: Org) -> str:
    kind = route.removeprefix("/api/v1/org/").split("/")[0]
    ids = _ids(b)
    assert kind in ids, f"name one of B's objects for {route} in _ids"
    return re.sub(r"\(\?P<[^>]+>[^)]+\)", str(ids[kind]), route)


def _state(b: Org) -> Any:
    """Everything of B's that a call could change."""
    account = b.tenant.account
    return (
        list(Project.objects.filter(account=account).values_list("name", "archived_at", "pk")),
        list(ApiKey.objects.filter(account=account).values_list("key_id", "revoked_at")),
        [
            (m.pk, m.role, sorted(m.projects.values_list("pk", flat=True)))
            for m in Member.objects.filter(account=account)
        ],
        list(Invitation.objects.filter(account=account).values_list("pk", "revoked_at")),
        list(MemberToken.objects.filter(member__account=account).values_list("pk", "revoked_at")),
        AuditEntry.objects.filter(account_id=account.pk).count(),
        list(WebhookEndpoint.objects.filter(account=account).values()),
        list(WebhookDelivery.objects.filter(endpoint__account=account).values()),
    )


@pytest.fixture
def a() -> Org:
    return org_create()


@pytest.fixture
def b() -> Org:
    b = org_create()
    invitation_create(account=b.tenant.account, email="open@example.com", role="admin")
    # An endpoint, and a delivery to it: the revocation of a key of B's.
    webhook_endpoint_create(account=b.tenant.account, url="http://127.0.0.1:9/b-hook")
    gone = api_key_issue(account=b.tenant.account, name="b-gone").api_key
    api_key_revoke(key_id=gone.key_id)
    return b


def test_the_urlconf_routes_are_the_schemas() -> None:
    """Every org route is in the OpenAPI schema, and there are as many as expected."""
    documented = {
        (path, method) for path, method in schema_operations() if path.startswith("/api/v1/org/")
    }
    as_schema = {
        (re.sub(r"\(\?P<([^>]+)>[^)]+\)", r"{\1}", route).replace("{pk}", "{id}"), method)
        for route, method in ROUTES
    }
    assert as_schema == documented
    assert len(ROUTES) >= 20


@pytest.mark.parametrize(("route", "method"), DETAIL)
def test_a_member_of_a_cannot_reach_bs_objects(route: str, method: str, a: Org, b: Org) -> None:
    before = _state(b)
    body = {"name": "mine", "role": "developer", "projects": [], "limits": {}}
    response = a.client("owner").generic(
        method, _url(route, b), data=json.dumps(body), content_type="application/json"
    )
    assert_error(response, 404, "not_found")
    assert _state(b) == before


@pytest.mark.parametrize(("route", "method"), LISTS)
def test_a_members_lists_and_creations_stay_in_a(route: str, method: str, a: Org, b: Org) -> None:
    before = _state(b)
    response = send(a.client("owner"), method, route)
    assert response.status_code < 500
    text = response.content.decode()
    for secret in (b.tenant.account.name, b.tenant.api_key.key_id, "open@example.com", "b-hook"):
        assert secret not in text
    for member in b.members.values():
        assert member.user.email not in text
    assert _state(b) == before


@pytest.mark.parametrize(("route", "method"), ROUTES)
def test_the_org_api_needs_a_member_token(route: str, method: str, b: Org) -> None:
    url = _url(route, b) if "(?P<" in route else route
    before = _state(b)
    assert_error(send(APIClient(), method, url), 401, "not_authenticated")
    for client in (staff_client(), b.tenant.client()):  # a staff token, an API key
        assert_error(send(client, method, url), 401, "authentication_failed")
    assert _state(b) == before


def test_a_revoked_or_expired_token_is_refused(a: Org) -> None:
    owner = a.members["owner"]
    revoked = member_token_issue(member=owner)
    MemberToken.objects.filter(pk=revoked.token.pk).update(revoked_at=timezone.now())
    expired = member_token_issue(member=owner, expires_at=timezone.now() + timedelta(seconds=1))
    MemberToken.objects.filter(pk=expired.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    for issued, message in ((revoked, "revoked"), (expired, "expired")):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
        error = assert_error(client.get("/api/v1/org/"), 401, "authentication_failed")
        assert message in error["message"]


def test_a_tampered_or_malformed_token_is_refused(a: Org) -> None:
    token = a.tokens["owner"]
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), "tfm_garbage", token + "x"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {bad}")
        assert_error(client.get("/api/v1/org/"), 401, "authentication_failed")


def test_a_removed_members_token_stops_working(a: Org) -> None:
    client = a.client("admin")
    assert client.get("/api/v1/org/projects/").status_code == 200
    member_remove(member=a.members["admin"], actor="test")
    assert_error(client.get("/api/v1/org/projects/"), 401, "authentication_failed")


def test_the_schema_describes_member_tokens_and_roles() -> None:
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert schema["components"]["securitySchemes"]["memberToken"]["scheme"] == "bearer"
    projects = schema["paths"]["/api/v1/org/projects/"]
    assert projects["post"]["security"] == [{"memberToken": []}]
    assert projects["post"]["x-required-roles"] == ["owner", "admin"]
    assert projects["get"]["x-required-roles"] == ["owner", "admin", "developer", "billing"]
    assert "x-required-scope" not in projects["get"]
