"""The spend counter rates exactly like the invoice: to the pico-unit, whatever the mix of
tiers, models, cached and reasoning tokens, a price change mid-month or a failed request; and
it stays exact past what a Lua number holds, up to a ceiling short of Redis' 64 bits."""

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import openai
import psycopg
import pytest
import redis
from django.conf import settings
from django.db import transaction

from billing import rating
from billing.money import to_minor
from billing.selectors import price_list
from billing.services import invoice_preview
from catalogue.models import Price, PriceBook
from fleet.services import backend_register
from gateway.batching import ScriptBatcher
from gateway.limits import Admission, Limiter, Limits, Spend
from gateway.pricing import REQUEST_MOST, SPEND_CEILING, month_spend
from metering.models import UsageRecord
from metering.redis_clients import redis_connect, redis_connect_async
from tests.support.gateway import wait_routable
from tests.support.http import call
from tests.support.ledger import drain
from tests.support.servers import Server, gateway_env, start_gateway, start_simulator
from tests.support.tenants import UPSTREAM_MODEL, Tenant, tenant_create
from tests.support.waiting import wait_until

pytestmark = pytest.mark.redis_cluster

# This module's own currency (no other test prices in it), and its own models and backend.
CURRENCY = "XBA"
SMALL, LARGE = "spend-small", "spend-large"
CHAT = [{"role": "user", "content": "hi"}]
LONG_CHAT = [{"role": "user", "content": "Repeat after me. " * 60}]
# Seconds from the module's start to the price change the gateway meets mid-test.
CHANGE_AFTER = 12.0
accounts = itertools.count(uuid.uuid4().int % 10**9 * 1000)


@pytest.fixture(scope="module")
def simulator_own(live_db: None) -> Iterator[Server]:
    """A backend of this module's own, so the faults armed here hit no other test."""
    server = start_simulator("--model", UPSTREAM_MODEL, "--seed", "11", "--speedup", "20")
    backend_register(
        name="spend-exact",
        base_url=server.url,
        upstream_model=UPSTREAM_MODEL,
        public_models=[SMALL, LARGE],
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def price_change(live_db: None) -> datetime:
    """Two books: one in force, with a row for LARGE, the tier's "*" rows, reasoning priced
    apart (or not) and odd request fees; the next one, dearer, takes over mid-test."""
    now = datetime.now(UTC)
    change = now + timedelta(seconds=CHANGE_AFTER)
    for name, start, factor in (
        ("spend now", now - timedelta(days=1), 1),
        ("spend next", change, 3),
    ):
        with transaction.atomic():  # a book is composed whole
            book = PriceBook.objects.create(name=name, currency=CURRENCY, effective_from=start)
            for tier, model, reasoning, fee in (
                ("premium", LARGE, "31.000007", "0.000123457"),
                ("premium", "*", None, "0.000000001"),
                ("interactive", "*", "2.718281", "0.001"),
            ):
                Price.objects.create(
                    price_book=book,
                    tier=tier,
                    model=model,
                    input_per_million=Decimal("1.234567") * factor,
                    cached_input_per_million=Decimal("0.333333") * factor,
                    output_per_million=Decimal("7.654321") * factor,
                    reasoning_per_million=None if reasoning is None else Decimal(reasoning),
                    request_fee=Decimal(fee) * factor,
                )
    return change


@pytest.fixture(scope="module")
def gateway_own(
    simulator_own: Server, price_change: datetime, redis_client: redis.Redis
) -> Iterator[Server]:
    """A gateway billing in CURRENCY, started after the books exist, on a Redis without an
    earlier session's counters (account ids start again in a new test database)."""
    server = start_gateway({**gateway_env(), "BILLING_CURRENCY": CURRENCY})
    key = tenant_create().key
    for model in (SMALL, LARGE):
        wait_routable(server, key, model)
    yield server
    server.stop()


@pytest.fixture
def billing_in_currency(settings: Any) -> None:
    settings.BILLING = {**settings.BILLING, "CURRENCY": CURRENCY}


@pytest.fixture
def sim(simulator_own: Server) -> Iterator[Server]:
    call("DELETE", simulator_own.url + "/_sim/faults")
    yield simulator_own
    call("DELETE", simulator_own.url + "/_sim/faults")


def sdk(gateway: Server, tenant: Tenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)


def requests_mix(gateway: Server, tenant: Tenant) -> int:
    """Both models, plain and streamed, cached prompt and reasoning tokens; how many."""
    api = sdk(gateway, tenant)
    for model in (SMALL, LARGE):
        api.chat.completions.create(model=model, messages=CHAT, max_tokens=9)
        for _ in range(2):  # the second one's prompt is cached
            api.chat.completions.create(
                model=model, messages=LONG_CHAT, max_tokens=40, reasoning_effort="high"
            )
        stream = api.chat.completions.create(model=model, messages=CHAT, max_tokens=13, stream=True)
        assert [chunk for chunk in stream]
    return 8


def stored(tenant: Tenant, count: int) -> list[UsageRecord]:
    records = UsageRecord.objects.filter(account_id=tenant.account.pk)

    def enough() -> bool:
        drain()
        return records.count() >= count

    wait_until(enough, what=f"{count} usage records")
    assert records.count() == count
    return list(records)


def rated(records: list[UsageRecord]) -> tuple[Decimal, set[int]]:
    """Billing's rating of each record, summed exactly, and the books that priced them."""
    prices = price_list(currency=CURRENCY)
    total, books = Decimal(0), set()
    for record in records:
        quantities = rating.Quantities.of(
            prompt=record.prompt_tokens,
            cached=record.cached_prompt_tokens,
            completion=record.completion_tokens,
            reasoning=record.reasoning_tokens,
            requests=rating.fee_requests(record.outcome),
        )
        found = prices.rate(
            tier=record.tier, model=record.model, at=record.started_at, quantities=quantities
        )
        assert found is not None
        book_id, amounts = found
        total += amounts.total
        books.add(book_id)
    return total, books


def spent(gateway: Server, tenant: Tenant) -> Decimal:
    reply = call("GET", gateway.url + "/v1/usage", key=tenant.key)
    assert reply.status == 200
    spend = reply.json()["spend"]
    assert spend["currency"] == CURRENCY
    return Decimal(spend["this_month"])


def rebuilt(account_id: int) -> Decimal:
    """What the rebuild after a Redis loss (gateway/sql/month_spend.sql) makes of the ledger."""

    async def read() -> list[tuple[int, int]]:
        db = settings.DATABASES["default"]
        async with await psycopg.AsyncConnection.connect(
            f"dbname={db['NAME']} user={db['USER']} host={db['HOST']} port={db['PORT']}"
        ) as conn:
            month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            return await month_spend(conn, month=month, currency=CURRENCY)

    return Decimal(dict(asyncio.run(read())).get(account_id, 0)).scaleb(-12)


@pytest.mark.usefixtures("billing_in_currency")
def test_the_counter_is_the_invoices_usage_to_the_pico_unit(
    gateway_own: Server, price_change: datetime
) -> None:
    tenants = [tenant_create("premium"), tenant_create("interactive")]
    served = {t.account.pk: requests_mix(gateway_own, t) for t in tenants}
    # The next book takes over at its instant, in the middle of the month's usage.
    time.sleep(max(0.0, (price_change - datetime.now(UTC)).total_seconds() + 0.2))
    for tenant in tenants:
        served[tenant.account.pk] += requests_mix(gateway_own, tenant)

    for tenant in tenants:
        records = stored(tenant, served[tenant.account.pk])
        assert any(r.cached_prompt_tokens for r in records)
        assert any(r.reasoning_tokens for r in records)
        expected, books = rated(records)
        assert len(books) == 2
        counted = spent(gateway_own, tenant)
        assert counted == expected
        assert rebuilt(tenant.account.pk) == expected

        # The invoice's usage lines, before included tokens and the plan fee.
        preview = invoice_preview(account=tenant.account)
        lines = [line.amount for line in preview.lines if line.item in rating.ITEMS]
        assert preview.currency == CURRENCY and lines
        assert sum(lines, Decimal(0)) == counted
        assert to_minor(counted, CURRENCY) == to_minor(sum(lines, Decimal(0)), CURRENCY)


def arm(sim: Server, **fault: object) -> None:
    assert call("POST", sim.url + "/_sim/faults", json.dumps(fault).encode()).status == 200


def test_a_request_that_fails_on_every_backend_pays_no_request_fee(
    gateway_own: Server, sim: Server
) -> None:
    tenant = tenant_create("premium")
    api = sdk(gateway_own, tenant)
    arm(sim, kind="status", status=500, count=1)
    with pytest.raises(openai.InternalServerError) as caught:
        api.chat.completions.create(model=LARGE, messages=CHAT, max_tokens=5)
    assert caught.value.status_code == 502
    (record,) = stored(tenant, 1)
    assert (record.outcome, record.prompt_tokens, record.completion_tokens) == (
        "backend_error",
        0,
        0,
    )
    # The model has a request fee; the failed request is charged nothing.
    assert spent(gateway_own, tenant) == 0
    assert rebuilt(tenant.account.pk) == 0


def test_a_backend_dying_mid_stream_charges_the_tokens_sent_without_the_fee(
    gateway_own: Server, sim: Server
) -> None:
    tenant = tenant_create("interactive")
    arm(sim, kind="disconnect", after_tokens=6, count=1)
    stream = sdk(gateway_own, tenant).chat.completions.create(
        model=SMALL, messages=CHAT, max_tokens=50, stream=True
    )
    with pytest.raises(openai.APIError):
        list(stream)
    (record,) = stored(tenant, 1)
    assert record.outcome == "backend_error" and record.completion_tokens > 0
    tokens_only, (book_id,) = rated([record])
    price = Price.objects.get(price_book_id=book_id, tier="interactive")
    assert (
        tokens_only
        == (
            record.prompt_tokens * price.input_per_million
            + record.completion_tokens * price.output_per_million
        )
        / 1_000_000
    )
    assert spent(gateway_own, tenant) == tokens_only
    assert rebuilt(tenant.account.pk) == tokens_only


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def limiter(loop: asyncio.AbstractEventLoop) -> Iterator[Limiter]:
    client = redis_connect_async(settings.REDIS_URL)
    yield Limiter(client, ScriptBatcher(client, linger=0.001), lease_seconds=30)
    loop.run_until_complete(client.aclose())


async def settled(limiter: Limiter, costs: list[tuple[Admission, str, int]]) -> None:
    for admission, request_id, cost in costs:
        limiter.settle(admission, request_id=request_id, used=1, spent=cost)
    await limiter._batcher.idle()


def test_the_cap_is_compared_exactly_past_what_a_lua_number_holds(
    loop: asyncio.AbstractEventLoop, limiter: Limiter
) -> None:
    """2^53 and 2^53 + 1 are one double: compared as numbers in Lua, a counter at 2^53 would be
    refused by a cap of 2^53 + 1."""
    account_id, now, cap = next(accounts), datetime.now(UTC), 2**53 + 1

    def admit(request_id: str, reserve: int) -> Admission:
        return loop.run_until_complete(
            limiter.admit(
                account_id=account_id,
                request_id=request_id,
                reserve=1,
                limits=Limits(),
                now=now,
                spend=Spend(CURRENCY, reserve, cap),
            )
        )

    def settle(admission: Admission, request_id: str, cost: int) -> None:
        loop.run_until_complete(settled(limiter, [(admission, request_id, cost)]))

    def standing() -> int:
        return loop.run_until_complete(
            limiter.peek(account_id=account_id, now=now, currency=CURRENCY)
        ).spent_this_month

    first = admit("a", 2**53 + 7)
    assert first.admitted and standing() == 2**53 + 7
    settle(first, "a", 2**53)
    assert standing() == 2**53
    second = admit("b", 1)
    assert second.admitted and standing() == 2**53 + 1
    assert admit("c", 1).reason == "budget"
    settle(second, "b", 0)
    assert standing() == 2**53


def test_the_counter_saturates_short_of_redis_64_bits(
    loop: asyncio.AbstractEventLoop, limiter: Limiter
) -> None:
    """An account spending past the ceiling (9 million of the currency in a month) is still
    served and counted up to it, never into an overflow error; a hard cap is at most the
    ceiling, so a capped account is refused there."""
    account_id, now = next(accounts), datetime.now(UTC)
    key = f"{{a:{account_id}}}:spend-pico:{now:%Y%m}:{CURRENCY}"
    redis_connect(settings.REDIS_URL).set(key, SPEND_CEILING - 1, ex=3600)

    def admit(request_id: str, cap: int | None = None) -> Admission:
        return loop.run_until_complete(
            limiter.admit(
                account_id=account_id,
                request_id=request_id,
                reserve=1,
                limits=Limits(),
                now=now,
                spend=Spend(CURRENCY, 10**18, cap),
            )
        )

    admissions = [admit(f"r{i}") for i in range(100)]
    assert all(a.admitted for a in admissions)
    # The first one took the counter past the ceiling, by one request's most at most.
    assert [a.spend_reserved for a in admissions[:2]] == [REQUEST_MOST, 0]
    loop.run_until_complete(
        settled(limiter, [(a, f"r{i}", 10**18) for i, a in enumerate(admissions)])
    )
    standing = loop.run_until_complete(
        limiter.peek(account_id=account_id, now=now, currency=CURRENCY)
    )
    assert SPEND_CEILING <= standing.spent_this_month <= SPEND_CEILING + REQUEST_MOST < 2**63
    assert admit("capped", cap=SPEND_CEILING).reason == "budget"
