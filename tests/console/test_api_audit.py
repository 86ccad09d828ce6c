"""Every change through the API leaves an audit entry: who, when, what, before and after."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from audit.models import AuditEntry
from catalogue.models import PlanPrice, Price
from console.models import scopes_all
from customers.models import LimitOverride, Tier
from customers.services import account_create
from tests.console.api_support import (
    Tenant,
    backend_create,
    price_book_create,
    staff_token,
    tenant_create,
)

pytestmark = pytest.mark.django_db

PRICE = {
    "tier": "premium",
    "model": "llama",
    "input_per_million": "1.000000",
    "cached_input_per_million": "0.500000",
    "output_per_million": "2.000000",
}


@dataclass
class Change:
    """A change: the request to make (given a fresh tenant), what it must record, and a check
    of the entry's before and after snapshots."""

    action: str
    object_type: str
    request: Callable[[Tenant], tuple[str, str, dict[str, Any] | None]]
    check: Callable[[dict[str, Any] | None, dict[str, Any] | None], bool]


def _draft_price(t: Tenant) -> Price:
    return Price.objects.create(price_book=price_book_create(in_force=False), **PRICE)


def _draft_plan(t: Tenant) -> PlanPrice:
    return PlanPrice.objects.create(price_book=price_book_create(in_force=False), tier="free")


CHANGES = {
    "account create": Change(
        "create",
        "customers.account",
        lambda t: ("POST", "/api/v1/accounts/", {"name": "new-co", "tier": "free"}),
        lambda before, after: before is None and after is not None and after["name"] == "new-co",
    ),
    "account update with limits": Change(
        "update",
        "customers.account",
        lambda t: (
            "PATCH",
            f"/api/v1/accounts/{t.account.pk}/",
            {"name": "renamed", "limits": {"tokens_per_day": 1000}},
        ),
        lambda before, after: (
            before is not None
            and after is not None
            and before["name"] != "renamed"
            and before["limits"] is None
            and after["name"] == "renamed"
            and after["limits"]["tokens_per_day"] == 1000
        ),
    ),
    "account suspend": Change(
        "suspend",
        "customers.account",
        lambda t: ("POST", f"/api/v1/accounts/{t.account.pk}/suspend/", None),
        lambda before, after: (
            (before or {})["status"] == "active" and (after or {})["status"] == "suspended"
        ),
    ),
    "account delete": Change(
        "delete",
        "customers.account",
        lambda t: (
            "DELETE",
            f"/api/v1/accounts/{account_create(name='gone', tier_slug='free').pk}/",
            None,
        ),
        lambda before, after: before is not None and after is None,
    ),
    "key issue": Change(
        "issue",
        "customers.apikey",
        lambda t: ("POST", "/api/v1/keys/", {"account": t.account.pk}),
        lambda before, after: before is None and after is not None and after["revoked_at"] is None,
    ),
    "key revoke": Change(
        "revoke",
        "customers.apikey",
        lambda t: ("POST", f"/api/v1/keys/{t.api_key.key_id}/revoke/", None),
        lambda before, after: (
            (before or {})["revoked_at"] is None and (after or {})["revoked_at"] is not None
        ),
    ),
    "key rotate": Change(
        "rotate",
        "customers.apikey",
        lambda t: ("POST", f"/api/v1/keys/{t.api_key.key_id}/rotate/", None),
        lambda before, after: (
            (before or {})["revoked_at"] is None and (after or {})["revoked_at"] is not None
        ),
    ),
    "tier create": Change(
        "create",
        "customers.tier",
        lambda t: ("POST", "/api/v1/tiers/", {"slug": "research", "name": "R", "priority": 0}),
        lambda before, after: before is None and (after or {})["slug"] == "research",
    ),
    "tier update": Change(
        "update",
        "customers.tier",
        lambda t: ("PATCH", f"/api/v1/tiers/{t.account.tier.pk}/", {"requests_per_minute": 7}),
        lambda before, after: (
            (before or {})["requests_per_minute"] == 6000
            and (after or {})["requests_per_minute"] == 7
        ),
    ),
    "tier delete": Change(
        "delete",
        "customers.tier",
        lambda t: (
            "DELETE",
            f"/api/v1/tiers/{Tier.objects.create(slug='x', name='x', priority=9).pk}/",
            None,
        ),
        lambda before, after: (before or {})["slug"] == "x" and after is None,
    ),
    "backend create": Change(
        "create",
        "fleet.backend",
        lambda t: (
            "POST",
            "/api/v1/backends/",
            {
                "name": "gpu-1",
                "base_url": "http://10.0.0.5:8000/",
                "upstream_model": "m",
                "public_models": ["llama"],
            },
        ),
        lambda before, after: (
            before is None and (after or {})["base_url"] == "http://10.0.0.5:8000"
        ),
    ),
    "backend update": Change(
        "update",
        "fleet.backend",
        lambda t: (
            "PATCH",
            f"/api/v1/backends/{backend_create('gpu-2').pk}/",
            {"upstream_model": "n"},
        ),
        lambda before, after: (
            (before or {})["upstream_model"] == "llama-up"
            and (after or {})["upstream_model"] == "n"
        ),
    ),
    "backend disable": Change(
        "disable",
        "fleet.backend",
        lambda t: ("POST", f"/api/v1/backends/{backend_create().pk}/disable/", None),
        lambda before, after: (
            (before or {})["enabled"] is True and (after or {})["enabled"] is False
        ),
    ),
    "backend enable": Change(
        "enable",
        "fleet.backend",
        lambda t: (
            "POST",
            f"/api/v1/backends/{_disabled_backend().pk}/enable/",
            None,
        ),
        lambda before, after: (
            (before or {})["enabled"] is False and (after or {})["enabled"] is True
        ),
    ),
    "backend delete": Change(
        "delete",
        "fleet.backend",
        lambda t: ("DELETE", f"/api/v1/backends/{backend_create().pk}/", None),
        lambda before, after: before is not None and after is None,
    ),
    "price book create": Change(
        "create",
        "catalogue.pricebook",
        lambda t: (
            "POST",
            "/api/v1/price-books/",
            {
                "name": "2031",
                "currency": "usd",
                "effective_from": "2031-01-01T00:00:00Z",
                "prices": [PRICE],
                "plans": [{"tier": "free", "included_tokens": 100}],
            },
        ),
        lambda before, after: (
            before is None
            and (after or {})["currency"] == "USD"
            and len((after or {})["prices"]) == 1
            and (after or {})["plans"][0]["included_tokens"] == 100
        ),
    ),
    "price book update": Change(
        "update",
        "catalogue.pricebook",
        lambda t: (
            "PATCH",
            f"/api/v1/price-books/{price_book_create(in_force=False).pk}/",
            {"name": "renamed"},
        ),
        lambda before, after: (
            (before or {})["name"] == "list" and (after or {})["name"] == "renamed"
        ),
    ),
    "price book delete": Change(
        "delete",
        "catalogue.pricebook",
        lambda t: ("DELETE", f"/api/v1/price-books/{_draft_price(t).price_book_id}/", None),
        lambda before, after: len((before or {})["prices"]) == 1 and after is None,
    ),
    "price create": Change(
        "create",
        "catalogue.price",
        lambda t: (
            "POST",
            "/api/v1/prices/",
            {**PRICE, "price_book": price_book_create(in_force=False).pk},
        ),
        lambda before, after: before is None and (after or {})["output_per_million"] == "2.000000",
    ),
    "price update": Change(
        "update",
        "catalogue.price",
        lambda t: ("PATCH", f"/api/v1/prices/{_draft_price(t).pk}/", {"request_fee": "0.01"}),
        lambda before, after: (
            (before or {})["request_fee"] == "0.000000"
            and (after or {})["request_fee"] == "0.010000"
        ),
    ),
    "price delete": Change(
        "delete",
        "catalogue.price",
        lambda t: ("DELETE", f"/api/v1/prices/{_draft_price(t).pk}/", None),
        lambda before, after: before is not None and after is None,
    ),
    "plan price update": Change(
        "update",
        "catalogue.planprice",
        lambda t: ("PATCH", f"/api/v1/plan-prices/{_draft_plan(t).pk}/", {"monthly_fee": "20"}),
        lambda before, after: (
            (before or {})["monthly_fee"] == "0.000000"
            and (after or {})["monthly_fee"] == "20.000000"
        ),
    ),
}


def _disabled_backend() -> Any:
    backend = backend_create()
    backend.enabled = False
    backend.save()
    return backend


@pytest.mark.parametrize("name", CHANGES)
def test_a_change_records_who_what_before_and_after(name: str) -> None:
    change = CHANGES[name]
    tenant = tenant_create()
    user = User.objects.create_user("alice", is_staff=True, is_superuser=True)
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {staff_token(user, scopes_all())}", REMOTE_ADDR="10.1.2.3"
    )
    method, url, body = change.request(tenant)
    AuditEntry.objects.all().delete()
    response = client.generic(method, url, data=_json(body), content_type="application/json")
    assert response.status_code in (200, 201, 204), response.content
    # One entry for the object (a new account also records its default project's creation).
    entry = AuditEntry.objects.get(action=change.action, object_type=change.object_type)
    assert (entry.actor_user_id, entry.actor) == (user.pk, "alice")
    assert entry.remote_addr == "10.1.2.3"
    assert change.check(entry.before, entry.after), (entry.before, entry.after)
    assert "secret_hash" not in str(entry.before) + str(entry.after)


def _json(body: dict[str, Any] | None) -> str:
    return json.dumps(body) if body is not None else ""


def test_a_refused_change_records_nothing() -> None:
    tenant = tenant_create()
    client = APIClient()
    client.force_login(User.objects.create_user("bob", is_staff=True, is_superuser=True))
    entries = AuditEntry.objects.count()  # the tenant's creation, by the system
    response = client.patch(
        f"/api/v1/accounts/{tenant.account.pk}/", {"tier": "nope"}, format="json"
    )
    assert response.status_code == 400
    assert AuditEntry.objects.count() == entries
    assert not LimitOverride.objects.exists()


def test_the_audit_log_is_readable_and_filterable_by_object() -> None:
    tenant = tenant_create()
    client = APIClient()
    client.force_login(User.objects.create_user("carol", is_staff=True, is_superuser=True))
    client.post(f"/api/v1/accounts/{tenant.account.pk}/suspend/")
    client.post(f"/api/v1/accounts/{tenant.account.pk}/activate/")
    listed = client.get(
        "/api/v1/audit-entries/",
        {"object_type": "customers.account", "object_id": str(tenant.account.pk)},
    ).json()
    assert [entry["action"] for entry in listed["results"]] == ["activate", "suspend", "create"]
    assert listed["results"][0]["actor"] == "carol"
