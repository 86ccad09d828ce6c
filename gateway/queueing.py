"""Priority admission: requests wait in Redis for a slot on their model's backends.

Backends have finite capacity (the sum of their max concurrent sequences). The queue for a
model pool is shared by every gateway process: premium before interactive before free, and
fair across accounts within a class (see lua/queue_enter.lua). A request that waits past its
tier's queue timeout, or finds its class's queue full, is shed with a 429 and not billed.
Granted slots and places in the queue are leased, so a dead gateway's slots come back and its
waiters leave the queue within a lease; grants are published on the pool's channel, and every
waiter also polls, so a lost message only delays a grant.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.batching import ScriptBatcher
from gateway.errors import ApiError
from metering.redis_scripts import SCRIPTS

log = logging.getLogger(__name__)

_ENTER = SCRIPTS["queue_enter"]
_LEAVE = SCRIPTS["queue_leave"]
GRANTED, QUEUED, SHED = 1, 0, -1
CLASSES = 3
_CHANNELS = "{q:*}:grants"


def pool_keys(model: str) -> tuple[str, ...]:
    tag = f"{{q:{model}}}"
    return (
        f"{tag}:running",
        f"{tag}:deadlines",
        f"{tag}:class",
        *(f"{tag}:waiting:{c}" for c in range(CLASSES)),
        f"{tag}:tags",
        f"{tag}:clocks",
        f"{tag}:leases",
        f"{tag}:grants",
    )


@dataclass(slots=True)
class Slot:
    model: str
    request_id: str
    capacity: int
    waited_ms: float


class AdmissionQueue:
    def __init__(
        self, client: aioredis.Redis, batcher: ScriptBatcher, *, lease_seconds: float
    ) -> None:
        self.client = client
        self.lease_ms = int(lease_seconds * 1000)
        self._batcher = batcher
        # Requests of this process waiting for a slot: request_id -> (model, capacity, grant).
        self._waiters: dict[str, tuple[str, int, asyncio.Future[None]]] = {}
        # Slots this process holds: request_id -> model, for lease renewal.
        self.held: dict[str, str] = {}

    async def acquire(
        self,
        *,
        model: str,
        request_id: str,
        klass: int,
        account_id: int,
        cost: int,
        capacity: int,
        depth: int | None,
        patience: float,
    ) -> Slot:
        """Wait for a slot; raises a 429 ApiError if shed (queue full or waited too long).

        Cancelling the wait gives up the request's place, or its slot if it got one.
        """
        started = time.monotonic()
        now = _now_ms()
        keys = pool_keys(model)
        args = (
            now,
            request_id,
            min(klass, CLASSES - 1),
            account_id,
            cost,
            capacity,
            self.lease_ms,
            -1 if depth is None else depth,
            now + int(patience * 1000),
        )
        granted = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = (model, capacity, granted)
        try:
            answer = await self._batcher.call(_ENTER, keys[:-1], args)
            if answer == SHED:
                raise _shed("The queue for this model is full.", retry_after=1)
            if answer == QUEUED:
                await self._wait(model, request_id, capacity, granted, patience)
        except asyncio.CancelledError:
            # Queued after the entry (calls go out in order): frees the place or the slot.
            leave = (_now_ms(), request_id, capacity, self.lease_ms, "release")
            self._batcher.call(_LEAVE, keys, leave).add_done_callback(_check_released)
            raise
        finally:
            self._waiters.pop(request_id, None)
        self.held[request_id] = model
        return Slot(model, request_id, capacity, (time.monotonic() - started) * 1000)

    async def _wait(
        self,
        model: str,
        request_id: str,
        capacity: int,
        granted: "asyncio.Future[None]",
        patience: float,
    ) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(granted), patience)
        except TimeoutError:
            reply = await self._leave(model, request_id, capacity, "cancel")
            if reply[0] != b"granted":
                raise _shed(
                    "The service is busy and your request waited too long.",
                    retry_after=max(1, round(patience)),
                ) from None

    def release(self, slot: Slot) -> None:
        """Give the slot back (in the background) and hand free capacity to the queue."""
        self.held.pop(slot.request_id, None)
        keys = pool_keys(slot.model)
        args = (_now_ms(), slot.request_id, slot.capacity, self.lease_ms, "release")
        self._batcher.call(_LEAVE, keys, args, linger=True).add_done_callback(_check_released)

    async def _leave(self, model: str, request_id: str, capacity: int, mode: str) -> Any:
        args = (_now_ms(), request_id, capacity, self.lease_ms, mode)
        return await self._batcher.call(_LEAVE, pool_keys(model), args)

    async def listen(self) -> None:
        """Wake local waiters when any gateway grants them a slot, until cancelled."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(_CHANNELS)
        try:
            async for message in pubsub.listen():
                self._wake(message["data"].decode())
        finally:
            await pubsub.aclose()

    async def maintain(self) -> None:
        """Renew the leases of held slots and of places in the queue, hand out capacity freed
        by lapsed leases (dead gateways) and catch grants whose message was lost."""
        expiry = _now_ms() + self.lease_ms
        pipe = self.client.pipeline(transaction=False)
        # Snapshots: requests come and go while the pipeline is out.
        held = list(self.held.items())
        for request_id, model in held:
            pipe.zadd(pool_keys(model)[0], {request_id: expiry}, xx=True)
        waiting = list(self._waiters.items())
        for request_id, (model, _, _) in waiting:
            keys = pool_keys(model)
            running, leases = keys[0], keys[8]
            # A granted waiter's slot is renewed too, until the waiter wakes and holds it.
            pipe.zadd(running, {request_id: expiry}, xx=True)
            pipe.zadd(leases, {request_id: expiry}, xx=True)
            pipe.zscore(running, request_id)
        replies = await pipe.execute()
        for (request_id, _), score in zip(waiting, replies[len(held) + 2 :: 3], strict=True):
            if score is not None:
                self._wake(request_id)
        for model, capacity in {(model, capacity) for model, capacity, _ in self._waiters.values()}:
            await self._leave(model, "", capacity, "release")

    def _wake(self, request_id: str) -> None:
        waiter = self._waiters.get(request_id)
        if waiter is not None and not waiter[2].done():
            waiter[2].set_result(None)


def _shed(message: str, *, retry_after: int) -> ApiError:
    return ApiError(
        429,
        message,
        type="requests",
        code="server_overloaded",
        headers=((b"retry-after", str(retry_after).encode()),),
    )


def _check_released(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("could not release a slot; its lease will lapse", exc_info=exc)


def _now_ms() -> int:
    return int(time.time() * 1000)
