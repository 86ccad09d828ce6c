"""Priority admission on the real Redis: classes in order, fairness within a class, shedding."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from django.conf import settings

from gateway.batching import ScriptBatcher
from gateway.errors import ApiError
from gateway.queueing import AdmissionQueue, Slot, pool_keys
from metering.redis_clients import redis_connect_async
from tests.support.queues import queued, wait_listening
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.redis_cluster

PREMIUM, FREE = 0, 2


@pytest.fixture
async def queue() -> AsyncIterator[AdmissionQueue]:
    name = f"test-queue-{uuid.uuid4().hex[:8]}"
    client = redis_connect_async(settings.REDIS_URL, client_name=name)
    batcher = ScriptBatcher(client, linger=0.001)
    admission = AdmissionQueue(client, batcher, lease_seconds=2.0)
    listener = asyncio.create_task(admission.listen())
    await wait_listening(client, name)
    yield admission
    listener.cancel()
    await batcher.idle()  # the last releases are still on their way
    await client.aclose()


async def wait_queued(queue: AdmissionQueue, pool: str, klass: int, count: int) -> None:
    await wait_until_async(
        lambda: has_queued(queue, pool, klass, count),
        what=f"{count} requests of class {klass} to queue",
    )


async def has_queued(queue: AdmissionQueue, pool: str, klass: int, count: int) -> bool:
    return await queued(queue.client, pool, klass) == count


def model() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


async def acquire(
    queue: AdmissionQueue,
    pool: str,
    klass: int,
    account: int,
    *,
    capacity: int = 1,
    depth: int | None = None,
    patience: float = 5.0,
) -> Slot:
    return await queue.acquire(
        model=pool,
        request_id=uuid.uuid4().hex,
        klass=klass,
        account_id=account,
        cost=100,
        capacity=capacity,
        depth=depth,
        patience=patience,
    )


async def test_a_free_slot_is_granted_at_once(queue: AdmissionQueue) -> None:
    slot = await acquire(queue, model(), FREE, 1)
    assert slot.waited_ms < 100


async def test_premium_is_served_before_free_waiting_longer(queue: AdmissionQueue) -> None:
    pool = model()
    holder = await acquire(queue, pool, FREE, 1)
    free = asyncio.create_task(acquire(queue, pool, FREE, 2))
    await wait_queued(queue, pool, FREE, 1)
    premium = asyncio.create_task(acquire(queue, pool, PREMIUM, 3))
    await wait_queued(queue, pool, PREMIUM, 1)
    queue.release(holder)
    first = await asyncio.wait_for(premium, 2)
    assert not free.done()
    queue.release(first)
    queue.release(await asyncio.wait_for(free, 2))


async def test_a_flooding_account_cannot_starve_another(queue: AdmissionQueue) -> None:
    pool = model()
    holder = await acquire(queue, pool, FREE, 1)
    order: list[int] = []

    async def ask(account: int) -> None:
        slot = await acquire(queue, pool, FREE, account, patience=20)
        order.append(account)
        await asyncio.sleep(0.01)  # kept a sleep, the scenario: the request holds its slot
        queue.release(slot)

    flood = [asyncio.create_task(ask(7)) for _ in range(10)]
    await wait_queued(queue, pool, FREE, 10)
    quiet = asyncio.create_task(ask(8))
    await wait_queued(queue, pool, FREE, 11)
    queue.release(holder)
    await asyncio.wait_for(asyncio.gather(quiet, *flood), 10)
    # Fair queuing: the quiet account waits for at most one of the flood's requests.
    assert order.index(8) <= 1


async def test_a_backlogged_accounts_share_stays_within_the_fair_queuing_bound(
    queue: AdmissionQueue,
) -> None:
    """Both accounts always have a request waiting; one floods with ten times as many.

    Start-time fair queuing with equal costs serves backlogged accounts alternately, so at
    any point their counts of grants differ by at most one request (plus one for the
    grant in progress when the quiet account's next request joins).
    """
    pool = model()
    order: list[int] = []
    done = asyncio.Event()

    async def keep_asking(account: int) -> None:
        while not done.is_set():
            slot = await acquire(queue, pool, FREE, account, capacity=1, patience=30)
            order.append(account)
            if len(order) >= 80:
                done.set()
            await asyncio.sleep(0.002)  # kept a sleep, the scenario: it holds its slot
            queue.release(slot)

    async def flood_in_pool() -> bool:
        # All 20 flood requests hold the slot or wait for it.
        held = int(await queue.client.zcard(pool_keys(pool)[0]))
        return held + await queued(queue.client, pool, FREE) == 20

    flood = [asyncio.create_task(keep_asking(7)) for _ in range(20)]
    await wait_until_async(flood_in_pool, what="the flood to queue first")
    joined = len(order)
    quiet = [asyncio.create_task(keep_asking(8)) for _ in range(2)]
    await asyncio.wait_for(done.wait(), 30)
    for task in flood + quiet:
        task.cancel()
    await asyncio.gather(*flood, *quiet, return_exceptions=True)
    start = order.index(8)
    assert start - joined <= 2  # the quiet account's first request overtakes the backlog
    served = order[start:80]
    for end in range(1, len(served) + 1):
        prefix = served[:end]
        assert abs(prefix.count(7) - prefix.count(8)) <= 2, served
    assert 0.45 <= served.count(8) / len(served) <= 0.55


async def test_a_full_queue_sheds_with_429(queue: AdmissionQueue) -> None:
    pool = model()
    holder = await acquire(queue, pool, FREE, 1)
    waiting = asyncio.create_task(acquire(queue, pool, FREE, 2, depth=1))
    await wait_queued(queue, pool, FREE, 1)
    with pytest.raises(ApiError) as shed:
        await acquire(queue, pool, FREE, 3, depth=1)
    assert shed.value.status == 429 and dict(shed.value.headers)[b"retry-after"] == b"1"
    queue.release(holder)
    queue.release(await asyncio.wait_for(waiting, 2))


async def test_a_request_that_waits_too_long_is_shed_and_leaves_the_queue(
    queue: AdmissionQueue,
) -> None:
    pool = model()
    holder = await acquire(queue, pool, FREE, 1)
    with pytest.raises(ApiError) as shed:
        await acquire(queue, pool, FREE, 2, patience=0.2)
    assert shed.value.status == 429
    queue.release(holder)
    # The one who gave up does not get the freed slot: the next asker does, at once.
    slot = await asyncio.wait_for(acquire(queue, pool, FREE, 3), 2)
    assert slot.waited_ms < 200


async def test_a_dead_holders_slot_comes_back_after_its_lease(queue: AdmissionQueue) -> None:
    pool = model()
    await acquire(queue, pool, FREE, 1)
    queue.held.clear()  # as if its gateway died: nobody renews or releases it
    waiter = asyncio.create_task(acquire(queue, pool, PREMIUM, 2, patience=10))
    await asyncio.sleep(2.2)  # kept a sleep, the scenario: the 2 s lease lapses
    await queue.maintain()
    slot = await asyncio.wait_for(waiter, 2)
    assert slot.waited_ms >= 2000
