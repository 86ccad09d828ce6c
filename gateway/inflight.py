"""The in-flight journal: the gateway's half of exactly-once metering (promise P1).

Before a request is sent to a backend it gets an in-flight entry in Redis with a lease; when
it ends, one Lua call swaps the entry for a usage event on the meter's stream. A gateway that
dies (SIGKILL, OOM, lost machine) stops renewing its leases, and any gateway's reaper turns the
expired entries into `lost` usage events carrying the tokens last reported. So each request
that reached a backend yields exactly one usage event, and the meter stores each event once.
"""

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.batching import Script, ScriptBatcher
from metering.events import USAGE_STREAM

log = logging.getLogger(__name__)

LEASES = "{meter}:inflight:leases"
ENTRIES = "{meter}:inflight:entries"
PROGRESS = "{meter}:inflight:progress"
_LUA = Path(__file__).parent / "lua"
_OPEN = Script.named("inflight_open")
_SETTLE = Script.named("inflight_settle")


@dataclass(slots=True)
class Progress:
    """What this process knows of a live request, reported with each lease renewal."""

    completion_tokens: int = 0


class InflightJournal:
    def __init__(
        self, client: aioredis.Redis, batcher: ScriptBatcher, *, lease_seconds: float
    ) -> None:
        self.lease_seconds = lease_seconds
        self.live: dict[str, Progress] = {}
        self._batcher = batcher
        self._renew = client.register_script((_LUA / "inflight_renew.lua").read_text())
        self._reap = client.register_script((_LUA / "inflight_reap.lua").read_text())

    async def open(self, request_id: str, entry: dict[str, Any]) -> Progress:
        """Record that the request is in flight; returns once Redis has it."""
        expiry = time.time() + self.lease_seconds
        args = (request_id, expiry, orjson.dumps(entry))
        await self._batcher.call(_OPEN, (LEASES, ENTRIES), args)
        progress = self.live[request_id] = Progress()
        return progress

    def settle(self, request_id: str, record: dict[str, Any]) -> None:
        """Hand the finished request's record to the meter, in the background.

        Not awaited by the request, and sent with the next urgent Redis call (or within the
        batcher's linger): if this process dies first, the entry's lease lapses and the reaper
        records the request from what the lease last knew.
        """
        self.live.pop(request_id, None)
        keys = (LEASES, ENTRIES, PROGRESS, USAGE_STREAM)
        settled = self._batcher.call(_SETTLE, keys, (request_id, orjson.dumps(record)), linger=True)
        settled.add_done_callback(functools.partial(_check_settled, request_id))

    async def renew(self) -> int:
        if not self.live:
            return 0
        now = time.time()
        args: list[Any] = [now + self.lease_seconds]
        for request_id, progress in self.live.items():
            args += [request_id, f"{progress.completion_tokens} {now:.3f}"]
        return int(await self._renew(keys=[LEASES, PROGRESS], args=args))

    async def reap(self, *, limit: int = 500) -> int:
        keys = [LEASES, ENTRIES, PROGRESS, USAGE_STREAM]
        return int(await self._reap(keys=keys, args=[time.time(), limit]))

    async def maintain(self) -> None:
        """Renew this process's leases and reap dead peers' requests."""
        await self.renew()
        if reaped := await self.reap():
            log.warning("reaped requests of a lost gateway", extra={"count": reaped})


def _check_settled(request_id: str, future: "asyncio.Future[Any]") -> None:
    if future.cancelled():
        return
    if (exc := future.exception()) is not None:
        # The entry stays in flight; the reaper records it when its lease lapses.
        log.error("could not settle a request; the reaper will record it", exc_info=exc)
    elif future.result() == 0:
        log.warning("request was reaped before it settled", extra={"request_id": request_id})
