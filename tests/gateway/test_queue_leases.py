"""Places in the queue are leased: a dead gateway's waiters leave it within the lease."""

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import redis
from django.conf import settings

from fleet.models import Backend
from fleet.services import backend_register
from gateway.batching import ScriptBatcher
from gateway.queueing import AdmissionQueue, pool_keys
from metering.redis_clients import redis_connect_async
from tests.support.http import call, stream_request
from tests.support.queues import queued, wait_listening
from tests.support.servers import Server, gateway_env, start_gateway
from tests.support.tenants import UPSTREAM_MODEL, Tenant, tenant_create
from tests.support.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.redis_cluster

FOUR = "llama-four"  # served by one backend that runs four sequences at once
SLOTS, WAITERS = 4, 36
LEASE_SECONDS = float(gateway_env()["GATEWAY_LEASE_SECONDS"])
PREMIUM = 0


@pytest.fixture
async def queues() -> AsyncIterator[tuple[AdmissionQueue, AdmissionQueue]]:
    """Two gateways' queues on one Redis: one lives on, the other is left to die."""
    name = f"test-queues-{uuid.uuid4().hex[:8]}"
    client = redis_connect_async(settings.REDIS_URL, client_name=name)
    batcher = ScriptBatcher(client, linger=0.001)
    live = AdmissionQueue(client, batcher, lease_seconds=1.0)
    doomed = AdmissionQueue(client, batcher, lease_seconds=1.0)
    listener = asyncio.create_task(live.listen())
    await wait_listening(client, name)
    yield live, doomed
    listener.cancel()
    await batcher.idle()
    await client.aclose()


async def test_a_dead_gateways_waiters_are_never_granted_a_slot(
    queues: tuple[AdmissionQueue, AdmissionQueue],
) -> None:
    live, doomed = queues
    pool = f"m-{uuid.uuid4().hex[:8]}"

    def ask(queue: AdmissionQueue) -> "asyncio.Task[object]":
        return asyncio.create_task(
            queue.acquire(
                model=pool,
                request_id=uuid.uuid4().hex,
                klass=PREMIUM,
                account_id=1,
                cost=100,
                capacity=1,
                depth=None,
                patience=30,
            )
        )

    holder = ask(doomed)
    await holder
    dead = [ask(doomed) for _ in range(5)]

    async def all_queued() -> bool:
        return await queued(live.client, pool, PREMIUM) == 5

    await wait_until_async(all_queued, what="the 5 doomed waiters to queue")
    doomed.held.clear()  # its gateway dies: nobody renews its slot or its places
    doomed._waiters.clear()
    fresh = ask(live)  # same account: queued behind every dead waiter
    started = time.monotonic()

    async def granted() -> bool:
        await live.maintain()  # what the gateway does every so often
        return fresh.done()

    try:
        await wait_until_async(
            granted, timeout=10, interval=0.2, what="the live gateway's waiter to be granted"
        )
        waited = time.monotonic() - started
    finally:
        for task in [fresh, *dead]:
            task.cancel()
        await asyncio.gather(fresh, *dead, return_exceptions=True)
    # One lease for the slot and the places to lapse, not one lease per dead waiter.
    assert waited < 1.0 + 0.5


@pytest.fixture(scope="module")
def four(simulator: Server, fleet: None) -> Iterator[None]:
    backend = backend_register(
        name="four",
        base_url=simulator.url,
        upstream_model=UPSTREAM_MODEL,
        public_models=[FOUR],
        max_concurrent_sequences=SLOTS,
    )
    yield
    Backend.objects.filter(pk=backend.pk).update(enabled=False)


def send_chat(gateway: Server, tenant: Tenant) -> socket.socket:
    """A chat request that waits in the queue; nobody reads its answer."""
    body = json.dumps(
        {"model": FOUR, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {tenant.key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


async def chats(gateway: Server, tenant: Tenant, count: int) -> list[tuple[int, float]]:
    """`count` chats at once: each one's status and when it was answered (monotonic)."""
    body = {"model": FOUR, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"authorization": f"Bearer {tenant.key}"}
    timeout = aiohttp.ClientTimeout(total=LEASE_SECONDS + 12)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one() -> tuple[int, float]:
            url = gateway.url + "/v1/chat/completions"
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                return response.status, time.monotonic()

        return await asyncio.gather(*(one() for _ in range(count)))


def wait_for_waiters(client: redis.Redis, count: int) -> None:
    waiting = pool_keys(FOUR)[3 + PREMIUM]
    wait_until(
        lambda: client.zcard(waiting) >= count,
        what=f"{count} requests to queue",
        explain=lambda: f"{client.zcard(waiting)} queued",
    )


@pytest.mark.usefixtures("four")
def test_requests_after_a_gateway_dies_with_a_full_queue_are_served_within_a_lease(
    simulator: Server, redis_client: redis.Redis
) -> None:
    tenant = tenant_create("premium")  # waits up to 60 s in the queue
    doomed, healthy = start_gateway(gateway_env()), start_gateway(gateway_env())
    sockets: list[socket.socket] = []
    call(
        "POST",
        simulator.url + "/_sim/faults",
        json.dumps({"kind": "stall", "seconds": 30, "after_tokens": 1, "count": SLOTS}).encode(),
    )
    try:
        sockets += [stream_request(doomed.url, tenant.key, FOUR)[0] for _ in range(SLOTS)]
        sockets += [send_chat(doomed, tenant) for _ in range(WAITERS)]
        wait_for_waiters(redis_client, WAITERS)
        doomed.kill()
        killed_at = time.monotonic()
        # The same account: fair queuing puts these behind every dead waiter.
        answers = asyncio.run(chats(healthy, tenant, SLOTS))
        assert [status for status, _ in answers] == [200] * SLOTS
        assert max(at for _, at in answers) - killed_at < LEASE_SECONDS + 3
    finally:
        for sock in sockets:
            sock.close()
        doomed.stop()
        healthy.stop()
        call("DELETE", simulator.url + "/_sim/faults")
