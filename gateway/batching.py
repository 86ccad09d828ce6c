"""Group commit for the hot path's Redis scripts: one pipeline per event-loop turn.

Every Lua call a request makes (admission, in-flight open, and the settles after it) goes
through one ScriptBatcher per process. Calls made while a pipeline is in flight queue up and go
out together in the next one, so under load N requests share a round trip and a connection;
alone, a call goes out at the next loop turn. A settle may linger a few milliseconds to ride
along with the next urgent call. Pipelines of EVALSHA stay Redis Cluster-friendly: each call
keeps its keys on one slot, and on a cluster goes to that slot's primary. The scripts themselves are
defined in metering/redis_scripts.py.

The pipelines go over a lean connection of their own (gateway/resp.py: hiredis packs and
parses), opened like the redis-py client given, which loads the scripts; on a Redis Cluster,
one per primary (gateway/resp.py, RespCluster).
"""

import asyncio
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoScriptError

from gateway.resp import RespCluster, RespConnection
from metering.redis_scripts import Script, load_async

# Script is re-exported: its home was here (tests/gateway/test_settle_faults.py imports it).
__all__ = ["Script", "ScriptBatcher"]


@dataclass(slots=True)
class _Call:
    script: Script
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    future: "asyncio.Future[Any]"
    durable: bool


class ScriptBatcher:
    def __init__(self, client: aioredis.Redis, *, linger: float, max_calls: int = 1024) -> None:
        self._client = client
        self._connection: RespConnection | RespCluster
        if isinstance(client, AsyncRedisCluster):
            self._connection = RespCluster(client)
        else:
            self._connection = RespConnection.like(client)
        self._linger = linger
        self._max_calls = max_calls
        self._pending: list[_Call] = []
        # Every script this batcher has sent: after a Redis restart they are loaded together.
        self._scripts: dict[str, Script] = {}
        self._flushing: asyncio.Task[None] | None = None
        # Durable calls on a cluster waiting for a replica's confirmation.
        self._replicating: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def call(
        self,
        script: Script,
        keys: tuple[str, ...],
        args: tuple[Any, ...],
        *,
        linger: bool = False,
        durable: bool = False,
    ) -> "asyncio.Future[Any]":
        """Queue a script call; the future resolves with its reply (or its error). On a Redis
        Cluster, a `durable` call's reply waits until a replica has its writes too (WAIT),
        so that a failover cannot lose what it wrote once it has answered; such calls go out
        in pipelines of their own, which the others do not wait for."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._scripts.setdefault(script.sha, script)
        self._pending.append(_Call(script, keys, args, future, durable))
        if not linger:
            self._start()
        elif self._flushing is None and self._timer is None:
            self._timer = loop.call_later(self._linger, self._start)
        return future

    async def idle(self) -> None:
        """Send everything queued so far and wait until it is answered."""
        self._start()
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        while self._replicating:
            await asyncio.gather(*self._replicating, return_exceptions=True)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is None and self._pending:
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_calls]
                del self._pending[: self._max_calls]
                if isinstance(self._connection, RespCluster) and any(c.durable for c in batch):
                    # Their replies wait for a replica (WAIT): the next batches go on meanwhile.
                    task = asyncio.create_task(
                        self._answer([call for call in batch if call.durable], durable=True)
                    )
                    self._replicating.add(task)
                    task.add_done_callback(self._replicating.discard)
                    batch = [call for call in batch if not call.durable]
                await self._answer(batch)
        finally:
            self._flushing = None

    async def _answer(self, batch: list[_Call], *, durable: bool = False) -> None:
        """Send the batch and resolve each call's future with its reply or error."""
        if not batch:
            return
        try:
            replies = await self._run(batch, durable)
        except Exception as exc:
            replies = [exc] * len(batch)
        for call, reply in zip(batch, replies, strict=True):
            if call.future.done():
                continue
            if isinstance(reply, Exception):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)

    async def _run(self, batch: list[_Call], durable: bool) -> list[Any]:
        replies = await self._pipeline(batch, durable)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # Redis restarted or was flushed since the scripts were loaded: load, then redo.
            # All of them, not only those missing here: were only some loaded, a later batch
            # could run a request's admission before the settle queued ahead of it.
            await load_async(self._client, list(self._scripts.values()))
            redone = await self._pipeline([batch[i] for i in missing], durable)
            for i, reply in zip(missing, redone, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: list[_Call], durable: bool) -> list[Any]:
        commands = [
            ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args) for call in calls
        ]
        if isinstance(self._connection, RespCluster):
            keys = [call.keys[0] for call in calls]
            return await self._connection.execute(commands, keys, durable=durable)
        return await self._connection.execute(commands)

    def close(self) -> None:
        self._connection.close()
