"""Usage by day, model, tier and account (summed in PostgreSQL), limits and what is left."""

from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from customers.models import LimitOverride
from gateway.limits import account_keys
from tests.console.api_support import Tenant, staff_client, tenant_create, usage_create

pytestmark = pytest.mark.django_db

DAY1 = datetime(2030, 3, 1, 10, tzinfo=UTC)
DAY2 = datetime(2030, 3, 2, 23, 59, tzinfo=UTC)
RANGE = {"from": "2030-03-01T00:00:00Z", "to": "2030-03-03T00:00:00Z"}


@pytest.fixture
def tenants() -> tuple[Tenant, Tenant]:
    a, b = tenant_create(), tenant_create("free")
    usage_create(a.account, at=DAY1, model="llama", prompt=10, completion=5, energy=1.5)
    usage_create(a.account, at=DAY1, model="llama", prompt=20, completion=7, energy=None)
    usage_create(a.account, at=DAY1, model="qwen", prompt=1, completion=1)
    usage_create(a.account, at=DAY2, model="llama", prompt=100, completion=50)
    usage_create(b.account, at=DAY1, model="llama", prompt=1000, completion=1000)
    usage_create(a.account, at=DAY2 + timedelta(minutes=1), prompt=9999)  # after the range
    return a, b


def test_a_key_holder_gets_its_usage_by_day_and_model(tenants: tuple[Tenant, Tenant]) -> None:
    a, _ = tenants
    page = a.client().get("/api/v1/me/usage/", RANGE).json()
    assert page["group_by"] == ["day", "model"]
    assert page["count"] == 3
    rows = [
        (r["day"], r["model"], r["requests"], r["prompt_tokens"], r["completion_tokens"])
        for r in page["results"]
    ]
    assert rows == [
        ("2030-03-01", "llama", 2, 30, 12),
        ("2030-03-01", "qwen", 1, 1, 1),
        ("2030-03-02", "llama", 1, 100, 50),
    ]
    assert page["results"][0]["energy_joules"] == 1.5
    assert page["results"][0]["account"] is None


def test_a_key_holder_cannot_widen_its_usage_to_other_accounts(
    tenants: tuple[Tenant, Tenant],
) -> None:
    a, b = tenants
    query = {**RANGE, "account": b.account.pk, "tier": "free", "group_by": "model"}
    page = a.client().get("/api/v1/me/usage/", query).json()
    assert [(r["model"], r["prompt_tokens"]) for r in page["results"]] == [
        ("llama", 130),
        ("qwen", 1),
    ]


def test_staff_group_usage_by_account_and_filter_by_tier(tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    staff = staff_client()
    page = staff.get("/api/v1/usage/", {**RANGE, "group_by": "account"}).json()
    assert [(r["account"], r["requests"], r["prompt_tokens"]) for r in page["results"]] == sorted(
        [(a.account.pk, 4, 131), (b.account.pk, 1, 1000)]
    )
    free = staff.get("/api/v1/usage/", {**RANGE, "group_by": "tier,model", "tier": "free"}).json()
    assert [(r["tier"], r["model"], r["requests"]) for r in free["results"]] == [
        ("free", "llama", 1)
    ]
    one = staff.get(
        "/api/v1/usage/", {**RANGE, "group_by": "day", "account": a.account.pk, "model": "llama"}
    ).json()
    assert [(r["day"], r["prompt_tokens"]) for r in one["results"]] == [
        ("2030-03-01", 30),
        ("2030-03-02", 100),
    ]


def test_usage_pages_through_its_rows(tenants: tuple[Tenant, Tenant]) -> None:
    a, _ = tenants
    first = a.client().get("/api/v1/me/usage/", {**RANGE, "limit": 2}).json()
    assert (first["count"], len(first["results"])) == (3, 2)
    second = a.client().get(first["next"].replace("http://testserver", "")).json()
    assert [r["model"] for r in second["results"]] == ["llama"]
    assert second["next"] is None


def test_usage_defaults_to_the_last_30_days() -> None:
    tenant = tenant_create()
    now = timezone.now()
    usage_create(tenant.account, at=now - timedelta(days=2), prompt=3)
    usage_create(tenant.account, at=now - timedelta(days=45), prompt=1000)
    page = tenant.client().get("/api/v1/me/usage/", {"group_by": "model"}).json()
    assert [r["prompt_tokens"] for r in page["results"]] == [3]
    since = datetime.fromisoformat(page["from"])
    until = datetime.fromisoformat(page["to"])
    assert until - since == timedelta(days=30)


def test_limits_and_what_is_left_match_the_gateways_counters() -> None:
    tenant = tenant_create("free")
    LimitOverride.objects.create(account=tenant.account, tokens_per_day=5000)
    keys = account_keys(tenant.account.pk, timezone.now())
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(keys[4], 1200)  # the day's token counter the admission script keeps
    try:
        me = tenant.client().get("/api/v1/me/").json()
    finally:
        client.delete(keys[4])
    assert me["tier"] == "free"
    assert me["limits"]["tokens_per_day"] == 5000
    assert me["limits"]["requests_per_minute"] == tenant.account.tier.requests_per_minute
    assert me["limits"]["tokens_per_month"] is None
    assert me["remaining"]["tokens_today"] == 3800
    assert me["remaining"]["tokens_this_month"] is None
    assert me["remaining"]["concurrent_requests"] == tenant.account.tier.max_concurrent_requests
