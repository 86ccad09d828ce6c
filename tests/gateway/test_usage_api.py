"""GET /v1/usage: a key holder reads its own limits, standing and usage, and no one else's."""

import openai
import pytest

from customers.models import LimitOverride
from tests.support.http import call
from tests.support.ledger import usage_for
from tests.support.servers import Server
from tests.support.tenants import MODEL, Tenant, tenant_create

pytestmark = [pytest.mark.usefixtures("gateway"), pytest.mark.redis_cluster]


def chat(gateway: Server, tenant: Tenant, max_tokens: int) -> str:
    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)
    completion = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens
    )
    return completion._request_id or ""


def test_a_key_holder_sees_its_limits_standing_and_recent_usage(gateway: Server) -> None:
    tenant = tenant_create("free")
    LimitOverride.objects.create(account=tenant.account, requests_per_minute=10)
    request_ids = [chat(gateway, tenant, max_tokens=3) for _ in range(2)]
    for request_id in request_ids:
        assert usage_for(request_id)
    usage = call("GET", gateway.url + "/v1/usage", key=tenant.key).json()
    assert usage["tier"] == "free"
    assert usage["limits"]["requests_per_minute"] == 10
    assert usage["limits"]["tokens_per_day"] == tenant.account.tier.tokens_per_day
    assert usage["remaining"]["requests_per_minute"] == 8
    assert usage["remaining"]["concurrent_requests"] == tenant.account.tier.max_concurrent_requests
    assert usage["usage"]["today"]["requests"] == 2
    assert usage["usage"]["today"]["completion_tokens"] == 6
    assert sorted(r["request_id"] for r in usage["recent"]) == sorted(request_ids)


def test_no_key_holder_sees_another_accounts_usage(gateway: Server) -> None:
    busy, quiet = tenant_create(), tenant_create()
    assert usage_for(chat(gateway, busy, max_tokens=2))
    usage = call("GET", gateway.url + "/v1/usage", key=quiet.key).json()
    assert usage["usage"]["this_month"]["requests"] == 0
    assert usage["recent"] == []
    assert (
        call(
            "GET", gateway.url + "/v1/usage?account=" + str(busy.account.pk), key=quiet.key
        ).json()["recent"]
        == []
    )


def test_usage_needs_a_key(gateway: Server) -> None:
    assert call("GET", gateway.url + "/v1/usage").status == 401
