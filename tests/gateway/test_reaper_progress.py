"""A gateway killed mid-stream: its requests are billed the tokens they had delivered, short of
about the last second (GATEWAY_PROGRESS_SECONDS), and end when they were last seen alive."""

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise

import aiohttp
import pytest
import redis

from fleet.services import backend_register
from metering.events import INFLIGHT_PROGRESS
from metering.models import UsageRecord
from tests.support.gateway import wait_routable
from tests.support.ledger import drain
from tests.support.servers import Server, gateway_env, start_gateway, start_simulator
from tests.support.tenants import UPSTREAM_MODEL, Tenant, tenant_unlimited
from tests.support.waiting import wait_until

PACED = "llama-paced"
STREAMS = 12
TOKENS_PER_SECOND = 50  # the backend's pace: a token every 20 ms
# Leases of 9 s renewed, before GATEWAY_PROGRESS_SECONDS, every 3 s (a third of the lease).
LEASE_SECONDS = 9
# What may go unbilled: the second between two reports, and a little for the scheduling.
LOST_SECONDS = 1.0 + 0.3


@pytest.fixture(scope="module")
def paced(live_db: None) -> Iterator[Server]:
    server = start_simulator("--model", UPSTREAM_MODEL, "--paced", "20", "20")
    backend_register(
        name="paced", base_url=server.url, upstream_model=UPSTREAM_MODEL, public_models=[PACED]
    )
    yield server
    server.stop()


@pytest.fixture
def unlimited(live_db: None) -> Tenant:
    return tenant_unlimited(max_concurrent_requests=10_000)


async def stream(url: str, key: str, delivered: dict[str, int], killed: threading.Event) -> None:
    """One streamed chat, counting the tokens that reach the client until the gateway dies."""
    body = {
        "model": PACED,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    async with aiohttp.ClientSession() as session:
        headers = {"authorization": f"Bearer {key}"}
        try:
            async with session.post(url, json=body, headers=headers) as response:
                request_id = response.headers["x-request-id"]
                delivered[request_id] = 0
                async for line in response.content:
                    if line.startswith(b"data: {") and b'"content":"' in line:
                        delivered[request_id] += 1
        except aiohttp.ClientError:
            assert killed.is_set()


def test_a_killed_gateways_streams_are_billed_up_to_its_last_second(
    paced: Server, fleet: None, gateway: Server, unlimited: Tenant, redis_client: redis.Redis
) -> None:
    env = {
        **gateway_env(),
        "GATEWAY_LEASE_SECONDS": str(LEASE_SECONDS),
        "GATEWAY_REAPER_INTERVAL_SECONDS": "5",
    }
    doomed = start_gateway(env)
    wait_routable(doomed, unlimited.key, PACED)
    delivered: dict[str, int] = {}
    killed = threading.Event()
    reports: set[float] = set()

    async def load() -> float:
        url = doomed.url + "/v1/chat/completions"
        clients = [
            asyncio.create_task(stream(url, unlimited.key, delivered, killed))
            for _ in range(STREAMS)
        ]
        # Long enough for several reports, and not a whole number of them; meanwhile, when
        # each request was last reported alive, as Redis holds it.
        until = time.monotonic() + 3.6
        while time.monotonic() < until:
            for value in redis_client.hvals(INFLIGHT_PROGRESS):
                reports.add(float(value.split(b" ")[1]))
            await asyncio.sleep(0.05)
        killed.set()
        doomed.kill()
        at = time.time()
        await asyncio.gather(*clients)
        return at

    try:
        killed_at = asyncio.run(load())
    finally:
        doomed.stop()
    assert len(delivered) == STREAMS and min(delivered.values()) > 2 * TOKENS_PER_SECOND
    # Reported every second (all of a process's requests at once), not every lease's third.
    times = sorted(reports)
    assert len(times) >= 3 and max(b - a for a, b in pairwise(times)) <= LOST_SECONDS, times

    # The session's gateway reaps them once their lease has lapsed.
    lost = UsageRecord.objects.filter(account_id=unlimited.account.pk)

    def all_reaped() -> bool:
        drain()
        return lost.count() == STREAMS

    wait_until(all_reaped, timeout=LEASE_SECONDS + 10, interval=0.5, what="the reaper's records")
    for record in lost:
        got = delivered[f"req_{record.request_id.hex}"]
        assert record.outcome == "gateway_lost" and record.tokens_estimated
        assert got - LOST_SECONDS * TOKENS_PER_SECOND <= record.completion_tokens <= got
        # Its end is when it was last seen alive: within the last second before the kill.
        last_seen = record.ended_at.timestamp()
        assert killed_at - LOST_SECONDS <= last_seen <= killed_at
        assert record.ended_at - record.started_at >= timedelta(seconds=2)
