"""Spend caps as a customer meets them: a hard cap refuses once the month's budget is spent,
settling charges what a request really cost, soft alerts arrive once, the cap holds across
gateways to within one request's reservation (P2), and a budget is in billing's currency."""

import asyncio
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import openai
import pytest
import redis
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client

from billing.budgets import budget_alerts_record
from billing.models import BudgetAlert
from catalogue.models import Price, PriceBook
from customers.models import Budget, LimitOverride
from customers.services import tiers_ensure_defaults
from gateway.validation import TEMPLATE_TOKENS
from metering.consumer import Meter
from metering.models import UsageRecord
from tests.support.http import call, stream_request
from tests.support.ledger import drain
from tests.support.redis_server import RedisServer
from tests.support.servers import Server, gateway_env, start_gateway
from tests.support.tenants import MODEL, Tenant, tenant_create
from tests.support.waiting import wait_until

# ISO 4217's code for tests: no other test's prices or budgets are in it. This module's
# gateways bill in it.
CURRENCY = "XTS"
BOOK = "budget tests"
MICRO = Decimal("0.000001")
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def price(fleet: None) -> Price:
    """The book in force: reasoning priced apart (dearer than output) and a request fee."""
    with transaction.atomic():  # the book whole: once in force it is sealed
        book = PriceBook.objects.create(
            name=BOOK, currency=CURRENCY, effective_from=datetime.now(UTC)
        )
        Price.objects.create(
            price_book=book,
            tier="interactive",
            model="*",
            input_per_million=Decimal("150"),
            cached_input_per_million=Decimal("75"),
            output_per_million=Decimal("600"),
            reasoning_per_million=Decimal("2400"),
            request_fee=Decimal("0.000123"),
        )
        return Price.objects.create(
            price_book=book,
            tier="premium",
            model=MODEL,
            input_per_million=Decimal("150.5"),
            cached_input_per_million=Decimal("75.25"),
            output_per_million=Decimal("600.125"),
            reasoning_per_million=None,
            request_fee=Decimal("0.000123"),
        )


@pytest.fixture(scope="module")
def gateways(price: Price) -> Iterator[list[Server]]:
    """Two gateway processes started after the book exists (they load prices at start-up)."""
    servers = [start_gateway(billing_env()) for _ in range(2)]
    warm(servers[0])
    yield servers
    for server in servers:
        server.stop()


def billing_env() -> dict[str, str]:
    return {**gateway_env(), "BILLING_CURRENCY": CURRENCY}


def warm(gateway: Server) -> None:
    """Have Redis load every script a request uses. A script's first call on a fresh Redis
    is retried after loading it, after calls that followed it in the same pipeline
    (gateway/batching.py): a settle could then land after the next admission."""
    tenant = tenant_create("interactive")
    sdk(gateway, tenant).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    usage(gateway, tenant)


def budgeted(
    limit: str, *, hard_cap: bool, alerts: tuple[int, ...] = (), tier: str = "interactive"
) -> Tenant:
    tenant = tenant_create(tier)
    Budget.objects.create(
        account=tenant.account,
        monthly_limit=Decimal(limit),
        currency=CURRENCY,
        hard_cap=hard_cap,
        alert_percents=list(alerts),
    )
    return tenant


def sdk(gateway: Server, tenant: Tenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)


def stored(tenant: Tenant, count: int, meter: Callable[[], object] = drain) -> list[UsageRecord]:
    """Wait for `count` of the tenant's records, draining with `meter` (the usage stream of the
    shared Redis unless a test's gateway uses its own): the gateway publishes after answering."""
    records = UsageRecord.objects.filter(account_id=tenant.account.pk)

    def enough() -> bool:
        meter()
        return records.count() >= count

    wait_until(enough, what=f"{count} usage records")
    assert records.count() == count
    return list(records.order_by("started_at"))


def cost(record: UsageRecord) -> Decimal:
    """The rating rule of docs/billing.md, written out plainly, for the price in force."""
    price = Price.objects.get(price_book__name=BOOK, tier=record.tier)
    reasoning = price.reasoning_per_million or price.output_per_million
    per_million = (
        (record.prompt_tokens - record.cached_prompt_tokens) * price.input_per_million
        + record.cached_prompt_tokens * price.cached_input_per_million
        + (record.completion_tokens - record.reasoning_tokens) * price.output_per_million
        + record.reasoning_tokens * reasoning
    )
    return per_million / 1_000_000 + price.request_fee


def charged(records: list[UsageRecord]) -> Decimal:
    """What the gateway's spend counter holds once every request settled: the exact sum of
    their costs, nothing rounded."""
    return sum((cost(r) for r in records), Decimal(0))


def usage(gateway: Server, tenant: Tenant) -> dict[str, object]:
    reply = call("GET", gateway.url + "/v1/usage", key=tenant.key)
    assert reply.status == 200
    return reply.json()  # type: ignore[no-any-return]


def month_spend(gateway: Server, tenant: Tenant) -> Decimal:
    spend = usage(gateway, tenant)["spend"]
    assert isinstance(spend, dict) and spend["currency"] == CURRENCY
    return Decimal(spend["this_month"])


def test_a_spent_budget_refuses_with_insufficient_quota_until_the_month_renews(
    gateways: list[Server],
) -> None:
    tenant = budgeted("0.05", hard_cap=True)
    api = sdk(gateways[0], tenant)
    served = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(20):
            api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=20)
            served += 1
    error = refused.value
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert "spent its 0.05 XTS budget for this month" in error.message
    assert error.response.headers["x-should-retry"] == "false"
    now = datetime.now(UTC)
    month_end = (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
    month_end = month_end.replace(second=0, microsecond=0)
    assert abs(int(error.response.headers["retry-after"]) - (month_end - now).total_seconds()) < 5

    # Refused because the settled costs reached the cap, and not before.
    records = stored(tenant, served)
    spent = charged(records)
    assert month_spend(gateways[0], tenant) == spent
    assert charged(records[:-1]) < Decimal("0.05") <= spent
    # Any gateway refuses, and a refused request is not billed.
    with pytest.raises(openai.RateLimitError):
        sdk(gateways[1], tenant).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    assert month_spend(gateways[1], tenant) == spent


def test_an_account_under_its_budget_or_with_alerts_only_is_served(
    gateways: list[Server],
) -> None:
    soft = budgeted("0.000001", hard_cap=False)
    for _ in range(2):
        sdk(gateways[0], soft).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    roomy = budgeted("1000", hard_cap=True)
    sdk(gateways[0], roomy).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)


def test_settling_swaps_the_reservation_for_what_the_request_cost(
    gateways: list[Server],
) -> None:
    tenant = budgeted("1000", hard_cap=True)
    gateway = gateways[0]
    # Reserved while it runs: the prompt estimate and all 2,000 completion tokens at the
    # reasoning price, the dearer one.
    sock, request_id = stream_request(gateway.url, tenant.key, MODEL, max_tokens=2000)
    try:
        in_flight = month_spend(gateway, tenant)
    finally:
        received = b""
        while not received.endswith(b"0\r\n\r\n") and (chunk := sock.recv(65536)):
            received += chunk
        sock.close()
    assert in_flight >= Decimal(2000 * 2400) / 1_000_000
    (record,) = stored(tenant, 1)
    assert record.completion_tokens == 2000 and record.reasoning_tokens == 0
    wait_until(
        lambda: month_spend(gateway, tenant) != in_flight,
        timeout=2,
        what="the settle to refund the reservation",
    )
    # Output tokens are charged at the output price: three quarters come back.
    assert month_spend(gateway, tenant) == charged([record]) < in_flight

    # Reasoning tokens at their own price, cached prompt tokens at theirs.
    long_prompt = [{"role": "user", "content": "Repeat after me. " * 60}]
    api = sdk(gateway, tenant)
    for _ in range(2):
        api.chat.completions.create(
            model=MODEL, messages=long_prompt, max_tokens=40, reasoning_effort="high"
        )
    records = stored(tenant, 3)
    assert any(r.reasoning_tokens for r in records)
    assert any(r.cached_prompt_tokens for r in records)
    assert month_spend(gateway, tenant) == charged(records)
    assert request_id


def test_usage_shows_the_budget_and_the_months_spend(gateways: list[Server]) -> None:
    tenant = budgeted("2.5", hard_cap=True, tier="premium")
    sdk(gateways[0], tenant).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    spent = charged(stored(tenant, 1))
    shown = usage(gateways[0], tenant)
    assert shown["spend"] == {"currency": CURRENCY, "this_month": decimal_text(spent)}
    assert shown["budget"] == {
        "monthly_limit": "2.500000",
        "currency": CURRENCY,
        "hard_cap": True,
        "remaining": decimal_text(Decimal("2.5") - spent),
    }
    assert usage(gateways[0], tenant_create("free"))["budget"] is None


def decimal_text(amount: Decimal) -> str:
    """An exact amount as the API writes it: its own decimal places, at least two."""
    whole, _, places = f"{amount:f}".partition(".")
    return f"{whole}.{places.rstrip('0').ljust(2, '0')}"


def test_soft_alerts_are_recorded_once_per_threshold(
    gateways: list[Server], caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    settings.BILLING = {**settings.BILLING, "CURRENCY": CURRENCY}
    tenant = budgeted("0.03", hard_cap=False, alerts=(50, 80, 100, 1000))
    api = sdk(gateways[0], tenant)
    for _ in range(2):
        api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=20)
    spent = sum((cost(r) for r in stored(tenant, 2)), Decimal(0))
    crossed = [p for p in (50, 80, 100, 1000) if spent * 100 >= Decimal("0.03") * p]
    assert crossed and len(crossed) < 4

    with caplog.at_level(logging.WARNING, logger="billing.budgets"):
        budget_alerts_record()
        budget_alerts_record()
    alerts = BudgetAlert.objects.filter(account=tenant.account)
    assert sorted(alerts.values_list("percent", flat=True)) == crossed
    assert {alert.spent for alert in alerts} == {spent}
    logged = [r for r in caplog.records if getattr(r, "account_id", None) == tenant.account.pk]
    assert sorted(r.percent for r in logged) == crossed  # type: ignore[attr-defined]


async def flood(gateways: list[Server], tenant: Tenant, count: int, body: bytes) -> Counter[str]:
    """`count` chats at once over every gateway; how many were served or refused, by code."""
    headers = {"authorization": f"Bearer {tenant.key}", "content-type": "application/json"}
    targets = itertools.cycle(gateways)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(gateway: Server) -> str:
            url = gateway.url + "/v1/chat/completions"
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.json()
                return "ok" if response.status == 200 else str(answer["error"]["code"])

        outcomes = await asyncio.gather(*(one(next(targets)) for _ in range(count)))
    return Counter(outcomes)


def test_concurrent_requests_exceed_the_cap_by_at_most_one_reservation(
    gateways: list[Server],
) -> None:
    # Output priced as reasoning: a reservation is close to the cost, so the cap is reached.
    limit, max_tokens = Decimal("0.5"), 40
    tenant = budgeted(str(limit), hard_cap=True, tier="premium")
    body = json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": max_tokens}).encode()
    outcomes = asyncio.run(flood(gateways, tenant, 60, body))
    assert outcomes["ok"] > 0 and outcomes["insufficient_quota"] > 0
    assert outcomes["ok"] + outcomes["insufficient_quota"] == 60

    records = stored(tenant, outcomes["ok"])
    spent = sum((cost(r) for r in records), Decimal(0))
    # The most one request may cost: its prompt estimate as input, the rest of its prompt's
    # bound (bytes + template) and every completion token at the output price, and the fee.
    estimate, bound = len(body) // 4, len(body) + TEMPLATE_TOKENS
    one_reservation = (
        estimate * Decimal("150.5") + (bound - estimate + max_tokens) * Decimal("600.125")
    ) * MICRO
    one_reservation += Decimal("0.000123")
    assert all(cost(r) <= one_reservation for r in records)
    assert spent <= limit + one_reservation
    # Nor refused early: at a refusal the spend counted the requests in flight at their most.
    slack = one_reservation - min(cost(r) for r in records)
    assert spent + len(records) * slack >= limit
    assert month_spend(gateways[0], tenant) == charged(records)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.kill()


def test_a_spent_budget_stays_spent_when_redis_comes_back_empty(
    own_redis: RedisServer, price: Price
) -> None:
    gateway = start_gateway({**billing_env(), "REDIS_URL": own_redis.url})
    meter = Meter(redis.Redis.from_url(own_redis.url), batch_size=100, claim_idle_seconds=30)
    tenant = budgeted("0.03", hard_cap=True)
    api = sdk(gateway, tenant)
    try:
        warm(gateway)
        served = 0
        with pytest.raises(openai.RateLimitError):
            for _ in range(10):
                api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=20)
                served += 1
        spent = charged(stored(tenant, served, meter.drain))

        own_redis.kill()
        own_redis.start()  # empty: no persistence
        wait_until(
            lambda: redis.Redis.from_url(own_redis.url).exists("{limits}:epoch"),
            interval=0.1,
            what="the counters to be rebuilt",
        )
        with pytest.raises(openai.RateLimitError) as still_spent:
            api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=20)
        assert still_spent.value.code == "insufficient_quota"
        # Rebuilt by rating the ledger: exactly what the settles had counted.
        assert month_spend(gateway, tenant) == spent
    finally:
        gateway.stop()


@pytest.mark.django_db
def test_the_console_refuses_a_budget_in_another_currency_than_billings() -> None:
    staff = Client()
    staff.force_login(User.objects.create_superuser("budgets", password="not-used"))
    tiers_ensure_defaults()
    account = tenant_create("interactive").account
    form = {"account": account.pk, "monthly_limit": "100", "alert_percents": "50,100"}

    assert (
        staff.get("/admin/customers/budget/add/").context["adminform"].form.initial["currency"]
        == "USD"  # billing's currency in tests
    )
    refused = staff.post("/admin/customers/budget/add/", {**form, "currency": "EUR"})
    assert refused.status_code == 200
    assert refused.context["adminform"].form.errors["currency"] == [
        "A budget must be in USD, the currency usage is rated and billed in: "
        "spend in USD cannot be compared with a limit in EUR."
    ]
    too_big = {**form, "currency": "USD", "hard_cap": "on", "monthly_limit": "9000000.01"}
    refused = staff.post("/admin/customers/budget/add/", too_big)
    assert "monthly_limit" in refused.context["adminform"].form.errors
    assert not Budget.objects.filter(account=account).exists()

    assert (
        staff.post("/admin/customers/budget/add/", {**form, "currency": "USD"}).status_code == 302
    )
    assert Budget.objects.get(account=account).currency == "USD"


def test_a_budget_left_in_another_currency_is_shown_but_not_enforced(
    gateways: list[Server],
) -> None:
    """Written before budgets had to be in billing's currency: its limit cannot be compared
    with the spend, so its hard cap is not applied (the gateway logs it) and no remaining is
    shown; the spend is counted in billing's currency all the same."""
    tenant = tenant_create("interactive")
    Budget.objects.create(
        account=tenant.account, monthly_limit=Decimal(0), currency="EUR", hard_cap=True
    )
    sdk(gateways[0], tenant).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)

    shown = usage(gateways[0], tenant)
    assert shown["spend"] == {
        "currency": CURRENCY,
        "this_month": decimal_text(charged(stored(tenant, 1))),
    }
    assert shown["budget"] == {
        "monthly_limit": "0.000000",
        "currency": "EUR",
        "hard_cap": False,
        "remaining": None,
    }


def test_spend_counters_kept_in_micro_units_are_rebuilt_in_pico_units_alone(
    own_redis: RedisServer, price: Price
) -> None:
    """Upgrading from micro-unit counters: Redis still has its token counters and their epoch,
    but no spend in pico-units. The first gateway rebuilds the spend from the ledger and leaves
    the token counters as they are."""
    gateway = start_gateway({**billing_env(), "REDIS_URL": own_redis.url})
    meter = Meter(redis.Redis.from_url(own_redis.url), batch_size=100, claim_idle_seconds=30)
    client = redis.Redis.from_url(own_redis.url)
    tenant = budgeted("1000", hard_cap=True)
    LimitOverride.objects.create(
        account=tenant.account, tokens_per_day=10**6, tokens_per_month=10**7
    )
    try:
        warm(gateway)
        api = sdk(gateway, tenant)
        for _ in range(3):
            api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=7)
        records = stored(tenant, 3, meter.drain)
        tokens = token_counters(gateway, tenant)
        month = datetime.now(UTC)
        spend_key = f"{{a:{tenant.account.pk}}}:spend-pico:{month:%Y%m}:{CURRENCY}"
        assert client.delete(spend_key, "{limits}:epoch:spend-pico") == 2

        wait_until(
            lambda: client.exists("{limits}:epoch:spend-pico"),
            interval=0.1,
            what="the spend to be rebuilt",
        )
        assert month_spend(gateway, tenant) == charged(records)
        assert token_counters(gateway, tenant) == tokens
    finally:
        gateway.stop()


def token_counters(gateway: Server, tenant: Tenant) -> tuple[object, object]:
    remaining = usage(gateway, tenant)["remaining"]
    assert isinstance(remaining, dict)
    return remaining["tokens_today"], remaining["tokens_this_month"]
