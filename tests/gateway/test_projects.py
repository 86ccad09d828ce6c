"""Projects as a key holder meets them through the official SDK: a project's limits refuse its
own keys while the account's other projects are served, every call is metered under its
key's project, and /v1/usage shows where the project stands."""

import time
from decimal import Decimal
from typing import Any

import openai
import pytest

from customers.models import Project
from customers.services import api_key_issue, project_archive, project_create, project_default
from tests.support.http import call
from tests.support.ledger import usage_for
from tests.support.servers import Server
from tests.support.tenants import MODEL, Tenant, tenant_create

pytestmark = pytest.mark.usefixtures("gateway")
CHAT = [{"role": "user", "content": "hi"}]


def project(tenant: Tenant, name: str, **data: Any) -> tuple[Project, str]:
    """A new project of the tenant's account, and a key in it."""
    made = project_create(account=tenant.account, name=name, data=data)
    return made, api_key_issue(account=tenant.account, project=made).plaintext


def sdk(gateway: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def chat(gateway: Server, key: str, max_tokens: int = 2) -> str:
    completion = sdk(gateway, key).chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=max_tokens
    )
    return completion._request_id or ""


def test_a_projects_request_rate_refuses_its_keys_while_another_project_is_served(
    gateway: Server,
) -> None:
    tenant = tenant_create("interactive")
    _, limited_key = project(tenant, "batch jobs", requests_per_minute=2)
    for _ in range(2):
        chat(gateway, limited_key)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(gateway, limited_key)
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert 'requests per minute of the project "batch jobs" (limit 2)' in error.message
    assert error.response.headers["x-ratelimit-limit-requests"] == "2"
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert 50 <= int(error.response.headers["retry-after"]) <= 60
    # The same account's default project is served, under the tier's limits.
    raw = sdk(gateway, tenant.key).chat.completions.with_raw_response.create(
        model=MODEL, messages=CHAT, max_tokens=2
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "600"
    assert raw.headers["x-ratelimit-remaining-requests"] == "597"


def test_a_projects_token_rate_refuses_with_the_project_named(gateway: Server) -> None:
    tenant = tenant_create()
    _, key = project(tenant, "evals", tokens_per_minute=30)
    completion = sdk(gateway, key).chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=40, extra_body={"ignore_eos": True}
    )
    assert completion.usage is not None and completion.usage.total_tokens > 40  # crosses it
    with pytest.raises(openai.RateLimitError) as caught:
        chat(gateway, key)
    assert 'tokens per minute of the project "evals" (limit 30)' in caught.value.message
    assert caught.value.response.headers["x-ratelimit-limit-tokens"] == "30"
    _, other = project(tenant, "prod")
    assert chat(gateway, other)


def test_a_projects_per_request_cap_is_the_smaller_one(gateway: Server) -> None:
    tenant = tenant_create()
    _, key = project(tenant, "small", max_tokens_per_request=5)
    with pytest.raises(openai.BadRequestError) as caught:
        chat(gateway, key, max_tokens=6)
    assert caught.value.param == "max_tokens"
    assert 'the project "small" allows at most 5' in caught.value.message
    completion = sdk(gateway, key).chat.completions.create(model=MODEL, messages=CHAT)
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_every_call_is_metered_under_its_keys_project(gateway: Server) -> None:
    tenant = tenant_create()
    research, key = project(tenant, "research")
    in_research, in_default = chat(gateway, key), chat(gateway, tenant.key)
    [record] = usage_for(in_research)
    assert record.project_id == research.pk
    [record] = usage_for(in_default)
    assert record.project_id == project_default(tenant.account).pk


def test_usage_shows_the_keys_project_beside_its_account(gateway: Server) -> None:
    tenant = tenant_create("free")
    research, key = project(
        tenant, "research", requests_per_minute=10, monthly_budget=Decimal("12.50")
    )
    assert usage_for(chat(gateway, key, max_tokens=3))
    assert usage_for(chat(gateway, tenant.key, max_tokens=4))
    usage = call("GET", gateway.url + "/v1/usage", key=key).json()
    # The account's figures are every project's.
    assert usage["limits"]["requests_per_minute"] == 20
    assert usage["remaining"]["requests_per_minute"] == 18
    assert usage["usage"]["today"]["requests"] == 2
    shown = usage["project"]
    assert (shown["id"], shown["name"]) == (research.pk, "research")
    assert shown["limits"]["requests_per_minute"] == 10
    assert shown["limits"]["tokens_per_day"] is None  # as the account
    assert shown["remaining"]["requests_per_minute"] == 9
    assert shown["remaining"]["tokens_today"] is None
    assert shown["usage"]["today"]["requests"] == 1
    assert shown["usage"]["today"]["completion_tokens"] == 3
    assert shown["budget"]["monthly_limit"] == "12.500000"
    assert shown["budget"]["hard_cap"] is False


def test_a_key_of_an_archived_project_is_refused_within_the_key_cache_time(
    gateway: Server,
) -> None:
    tenant = tenant_create()
    archived, key = project(tenant, "old")
    chat(gateway, key)
    project_archive(project=archived)
    time.sleep(1.1)  # GATEWAY_KEY_CACHE_SECONDS in tests: the scenario, not a wait for a result
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(gateway, key)
    assert caught.value.code == "invalid_api_key"
    assert chat(gateway, tenant.key)
