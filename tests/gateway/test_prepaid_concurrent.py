"""Prepaid credit as a customer meets it across a fleet: an account with $1.00 of credit is
served by every gateway until the balance is spent, then refused with 429 insufficient_quota
(not retried), the overdraft bounded by one request's reservation (P2), and what the ledger's
records cost is exactly what left the balance. The balance shows in GET /v1/usage and
/api/v1/me/."""

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.test import Client

from catalogue.models import Price, PriceBook
from gateway.limits import prepaid_keys
from gateway.validation import TEMPLATE_TOKENS
from metering.credits import CREDIT_EPOCH
from metering.models import UsageRecord
from tests.support.credits import prepaid_tenant
from tests.support.http import call
from tests.support.ledger import drain
from tests.support.servers import Server, gateway_env, start_gateway
from tests.support.tenants import MODEL, Tenant, tenant_create
from tests.support.waiting import wait_until

# ISO 4217's palladium: no other test's prices are in it. This module's gateways bill in it.
CURRENCY = "XPD"
BOOK = "prepaid tests"
CHAT = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 40
INPUT, OUTPUT, FEE = Decimal("150"), Decimal("600"), Decimal("0.0001")
WAVE = 40


@pytest.fixture(scope="module")
def price(fleet: None, redis_client: redis.Redis) -> Price:
    # This Redis holds the credit counters (a fresh one has none to lose): billing applies
    # grants without rebuilding first.
    redis_client.set(CREDIT_EPOCH, datetime.now(UTC).isoformat())
    with transaction.atomic():  # the book whole: once in force it is sealed
        book = PriceBook.objects.create(
            name=BOOK, currency=CURRENCY, effective_from=datetime.now(UTC)
        )
        return Price.objects.create(
            price_book=book,
            tier="premium",
            model="*",
            input_per_million=INPUT,
            cached_input_per_million=Decimal("75"),
            output_per_million=OUTPUT,
            reasoning_per_million=None,
            request_fee=FEE,
        )


@pytest.fixture(scope="module")
def gateways(price: Price) -> Iterator[list[Server]]:
    """Two gateways of two worker processes each, started after the book exists."""
    env = {**gateway_env(), "BILLING_CURRENCY": CURRENCY}
    servers = [start_gateway(env, workers=2) for _ in range(2)]
    for server in servers:  # every worker loads the scripts before the flood
        warm = tenant_create("premium")
        for _ in range(4):
            sdk(server, warm).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def billed_in_currency(settings: Any) -> None:
    """Grants are made in billing's currency: the gateways'."""
    settings.BILLING = {**settings.BILLING, "CURRENCY": CURRENCY}


def sdk(gateway: Server, tenant: Tenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)


@dataclass
class Outcome:
    gateway: int
    served: bool
    error: openai.APIStatusError | None = None


async def wave(gateways: list[Server], tenant: Tenant, count: int) -> list[Outcome]:
    """`count` chats at once, spread over the gateways, with the official async client."""
    clients = [
        openai.AsyncOpenAI(base_url=g.url + "/v1", api_key=tenant.key, max_retries=0)
        for g in gateways
    ]

    async def one(i: int) -> Outcome:
        which = i % len(clients)
        try:
            await clients[which].chat.completions.create(
                model=MODEL, messages=CHAT, max_tokens=MAX_TOKENS
            )
        except openai.APIStatusError as error:
            return Outcome(which, False, error)
        return Outcome(which, True)

    try:
        return await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        for client in clients:
            await client.close()


def credits(gateway: Server, tenant: Tenant) -> dict[str, Any]:
    reply = call("GET", gateway.url + "/v1/usage", key=tenant.key)
    assert reply.status == 200
    shown = reply.json()["credits"]
    assert isinstance(shown, dict) and shown["currency"] == CURRENCY
    return shown


def settled(gateway: Server, tenant: Tenant) -> Decimal:
    """The balance once no request holds a reservation (settles run in the background)."""
    wait_until(
        lambda: credits(gateway, tenant)["reserved"] == "0.00",
        timeout=10,
        what="every reservation to settle",
    )
    return Decimal(credits(gateway, tenant)["balance"])


def cost(record: UsageRecord) -> Decimal:
    """The rating rule of docs/billing.md, written out plainly, for the price in force."""
    per_million = (
        (record.prompt_tokens - record.cached_prompt_tokens) * INPUT
        + record.cached_prompt_tokens * Decimal("75")
        + record.completion_tokens * OUTPUT
    )
    return per_million / 1_000_000 + FEE


def stored(tenant: Tenant, count: int) -> list[UsageRecord]:
    records = UsageRecord.objects.filter(account_id=tenant.account.pk)

    def enough() -> bool:
        drain()
        return records.count() >= count

    wait_until(enough, what=f"{count} usage records")
    assert records.count() == count
    return list(records)


def one_reservation(body_bytes: int) -> Decimal:
    """The most one request may cost: its prompt's bound (bytes + template) at the input
    price, every completion token at the output price, and the fee."""
    bound = body_bytes + TEMPLATE_TOKENS
    return (bound * INPUT + MAX_TOKENS * OUTPUT) / 1_000_000 + FEE


def test_one_dollar_is_served_by_every_gateway_until_spent_then_refused(
    gateways: list[Server], billed_in_currency: None
) -> None:
    tenant = prepaid_tenant(Decimal("1.00"))
    assert settled(gateways[0], tenant) == Decimal("1.00")

    outcomes: list[Outcome] = []
    for _ in range(15):  # waves until one is refused whole: the balance covers no request
        this_wave = asyncio.run(wave(gateways, tenant, WAVE))
        outcomes += this_wave
        settled(gateways[0], tenant)
        if not any(o.served for o in this_wave):
            break
    served = [o for o in outcomes if o.served]
    refused = [o.error for o in outcomes if o.error is not None]
    assert not any(o.served for o in this_wave), "the balance was never spent"
    assert {o.gateway for o in served} == {0, 1}
    assert len(served) + len(refused) == len(outcomes)

    # Every refusal is the prepaid one: not retried, no retry time, how to top up.
    for error in refused:
        assert error.status_code == 429
        assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
        assert error.response.headers["x-should-retry"] == "false"
        assert "retry-after" not in error.response.headers
        assert "Your prepaid credit balance is used up (balance " in error.message
        assert f"{settings.PORTAL_BASE_URL}/portal/credits/ to continue." in error.message

    # What left the balance is exactly what the ledger's records cost.
    records = stored(tenant, len(served))
    spent = sum((cost(r) for r in records), Decimal(0))
    final = settled(gateways[1], tenant)
    assert final == Decimal("1.00") - spent
    balance_key, _ = prepaid_keys(tenant.account.pk)
    counter = int(redis.Redis.from_url(settings.REDIS_URL).get(balance_key) or 0)
    assert Decimal(counter).scaleb(-12) == final

    # Spent down to less than one request's reservation, and overdrawn by at most one
    # (admission only reserves what the balance covers, so in fact by nothing).
    reservation = one_reservation(len(_chat_body()))
    assert -reservation <= final < reservation
    assert final >= 0, f"overdraft {-final} {CURRENCY}"
    # The last refusal shows the balance left in cents (rounded down).
    last = refused[-1]
    assert last is not None
    floor = final.quantize(Decimal("0.01"), rounding="ROUND_FLOOR")
    assert f"(balance {floor:f} {CURRENCY}, this request may cost up to " in last.message


def _chat_body() -> bytes:
    """The body of one chat of the flood, at its longest (spaced: the SDK's JSON is at most
    that long), whose bytes bound the prompt a reservation pays for."""
    return json.dumps(
        {"messages": CHAT, "model": MODEL, "max_tokens": MAX_TOKENS}, separators=(", ", ": ")
    ).encode()


def test_usage_and_me_show_the_balance_and_what_is_held(
    gateways: list[Server], billed_in_currency: None
) -> None:
    tenant = prepaid_tenant(Decimal("2.50"))
    sdk(gateways[0], tenant).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    (record,) = stored(tenant, 1)
    left = Decimal("2.50") - cost(record)
    assert settled(gateways[0], tenant) == left
    assert credits(gateways[1], tenant) == {
        "currency": CURRENCY,
        "balance": f"{left.normalize():f}",
        "reserved": "0.00",
    }
    me = Client().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {tenant.key}")
    assert me.status_code == 200
    assert me.json()["credits"] == credits(gateways[0], tenant)

    arrears = tenant_create("premium")
    assert call("GET", gateways[0].url + "/v1/usage", key=arrears.key).json()["credits"] is None
    me = Client().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {arrears.key}")
    assert me.json()["credits"] is None


def test_an_account_without_credit_is_refused_and_a_lost_balance_is_a_503(
    gateways: list[Server], redis_client: redis.Redis, billed_in_currency: None
) -> None:
    tenant = prepaid_tenant(None)
    api = sdk(gateways[0], tenant)
    with pytest.raises(openai.RateLimitError) as refused:
        api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    assert "(balance 0.00 XPD, this request may cost up to " in refused.value.message

    # Redis lost its counters and billing has not rebuilt them: not "you have no credit".
    redis_client.delete(CREDIT_EPOCH)
    try:
        with pytest.raises(openai.InternalServerError) as unknown:
            api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
        assert unknown.value.status_code == 503
        assert unknown.value.code == "credits_unavailable"
        assert unknown.value.response.headers["retry-after"] == "5"
        assert credits(gateways[0], tenant)["balance"] is None
    finally:
        redis_client.set(CREDIT_EPOCH, datetime.now(UTC).isoformat())
