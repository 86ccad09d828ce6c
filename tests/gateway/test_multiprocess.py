"""Promise P2 across processes: four gateways share one set of limits in Redis."""

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import aiohttp
import pytest
import redis
from django.db.models import QuerySet

from customers.models import LimitOverride
from gateway.limits import account_keys
from gateway.queueing import pool_keys
from metering.events import INFLIGHT_LEASES as LEASES
from metering.models import UsageRecord
from tests.support.http import call, stream_request
from tests.support.ledger import drain
from tests.support.servers import Server, gateway_env, start_gateway
from tests.support.tenants import MODEL, Tenant, tenant_create
from tests.support.waiting import wait_until

pytestmark = pytest.mark.redis_cluster

GATEWAYS = 4
REQUESTS = 240


@pytest.fixture(scope="module")
def gateways(fleet: None) -> Iterator[list[Server]]:
    servers = [start_gateway(gateway_env()) for _ in range(GATEWAYS)]
    yield servers
    for server in servers:
        server.stop()


def limited(**limits: int) -> Tenant:
    tenant = tenant_create("premium")
    LimitOverride.objects.create(account=tenant.account, **limits)
    return tenant


async def flood(
    gateways: list[Server], tenant: Tenant, count: int, max_tokens: int, content: str = "hi"
) -> Counter[int]:
    """`count` chats at once, spread over every gateway; returns how many got each status."""
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
        }
    )
    headers = {"authorization": f"Bearer {tenant.key}", "content-type": "application/json"}
    targets = itertools.cycle(gateways)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(gateway: Server) -> int:
            url = gateway.url + "/v1/chat/completions"
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one(next(targets)) for _ in range(count)))
    return Counter(statuses)


def wait_until_quiet(client: redis.Redis, tenant: Tenant) -> None:
    """Once quiet, nobody holds a concurrency slot, a backend slot or an in-flight entry."""
    holdings = {
        "concurrency slots": account_keys(tenant.account.pk, datetime.now(UTC))[6],
        "backend slots": pool_keys(MODEL)[0],
        "in-flight entries": LEASES,
    }

    def left_behind() -> list[str]:
        return [what for what, key in holdings.items() if client.zcard(key)]

    wait_until(
        lambda: not left_behind(),
        timeout=5,
        what="every slot and in-flight entry to be given back",
        explain=lambda: f"left behind: {', '.join(left_behind())}",
    )


def stored(tenant: Tenant, count: int) -> QuerySet[UsageRecord]:
    """The tenant's usage records, once `count` are stored."""
    records = UsageRecord.objects.filter(account_id=tenant.account.pk)

    def enough() -> bool:
        drain()
        return records.count() >= count

    wait_until(enough, timeout=5, interval=0.1, what=f"{count} usage records")
    return records


def test_the_request_rate_limit_holds_across_gateways(
    gateways: list[Server], redis_client: redis.Redis
) -> None:
    tenant = limited(requests_per_minute=50)
    statuses = asyncio.run(flood(gateways, tenant, REQUESTS, max_tokens=4))
    assert statuses == {200: 50, 429: REQUESTS - 50}
    wait_until_quiet(redis_client, tenant)


def test_a_token_quota_is_exceeded_by_at_most_one_reservation(
    gateways: list[Server], redis_client: redis.Redis
) -> None:
    quota, max_tokens = 2_000, 40
    tenant = limited(tokens_per_day=quota)
    statuses = asyncio.run(flood(gateways, tenant, REQUESTS, max_tokens=max_tokens))
    assert statuses[200] > 0 and statuses[429] > 0 and set(statuses) == {200, 429}
    # Refusals start once reservations reach the quota; settling then refunds what was not
    # used, so the tokens used end below the quota or above it by at most one reservation.
    records = stored(tenant, statuses[200])
    assert records.count() == statuses[200]
    used = sum(r.prompt_tokens + r.completion_tokens for r in records)
    one_reservation = max_tokens + 30  # completion cap + the prompt estimate of this body
    assert used <= quota + one_reservation
    wait_until_quiet(redis_client, tenant)


def test_prompts_of_the_clients_choosing_cannot_carry_a_quota_past_one_request(
    gateways: list[Server], redis_client: redis.Redis
) -> None:
    """2,000 `!` are 2,000 tokens to a byte-level tokenizer, not the 500 that bytes / 4 guess:
    reservations are bounds, so the quota ends at most one request's own use over."""
    quota = 3_000
    tenant = limited(tokens_per_day=quota)
    statuses = asyncio.run(flood(gateways, tenant, 40, max_tokens=20, content="!" * 2000))
    assert statuses[200] > 0 and statuses[429] > 0 and set(statuses) == {200, 429}
    records = stored(tenant, statuses[200])
    totals = [r.prompt_tokens + r.completion_tokens for r in records]
    assert len(totals) == statuses[200] and min(totals) > 2_000
    assert sum(totals) <= quota + max(totals)
    wait_until_quiet(redis_client, tenant)


def test_a_killed_gateways_concurrency_slot_comes_back_within_its_lease(
    gateways: list[Server], simulator: Server
) -> None:
    tenant = limited(max_concurrent_requests=1)
    doomed = start_gateway(gateway_env())
    call(
        "POST",
        simulator.url + "/_sim/faults",
        b'{"kind": "stall", "seconds": 30, "after_tokens": 2}',
    )
    try:
        sock, _ = stream_request(doomed.url, tenant.key, MODEL)
        doomed.kill()
        killed_at = time.monotonic()
        assert asyncio.run(flood(gateways[:1], tenant, 1, max_tokens=1)) == {429: 1}
        wait_until(
            lambda: asyncio.run(flood(gateways[:1], tenant, 1, max_tokens=1)) == {200: 1},
            timeout=3 + 2 - (time.monotonic() - killed_at),
            interval=0.2,
            what="the slot to be freed within the 3 s lease",
        )
        sock.close()
    finally:
        doomed.stop()
        call("DELETE", simulator.url + "/_sim/faults")
