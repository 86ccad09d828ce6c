"""The in-flight journal: the gateway's half of exactly-once metering (promise P1).

Before a request is sent to a backend it gets an in-flight entry in Redis with a lease; when
it ends, one Lua call swaps the entry for a usage event on the meter's stream. A gateway that
dies (SIGKILL, OOM, lost machine) stops renewing its leases, and any gateway's reaper turns the
expired entries into `lost` usage events carrying the tokens last reported. So each request
that reached a backend yields exactly one usage event, and the meter stores each event once.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from metering.events import USAGE_STREAM

log = logging.getLogger(__name__)

LEASES = "{meter}:inflight:leases"
ENTRIES = "{meter}:inflight:entries"
PROGRESS = "{meter}:inflight:progress"
_LUA = Path(__file__).parent / "lua"


@dataclass(slots=True)
class Progress:
    """What this process knows of a live request, reported with each lease renewal."""

    completion_tokens: int = 0


class InflightJournal:
    def __init__(self, client: aioredis.Redis, *, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self.live: dict[str, Progress] = {}
        self._open = client.register_script((_LUA / "inflight_open.lua").read_text())
        self._renew = client.register_script((_LUA / "inflight_renew.lua").read_text())
        self._settle = client.register_script((_LUA / "inflight_settle.lua").read_text())
        self._reap = client.register_script((_LUA / "inflight_reap.lua").read_text())

    async def open(self, request_id: str, entry: dict[str, Any]) -> Progress:
        expiry = time.time() + self.lease_seconds
        await self._open(keys=[LEASES, ENTRIES], args=[request_id, expiry, orjson.dumps(entry)])
        progress = self.live[request_id] = Progress()
        return progress

    async def settle(self, request_id: str, record: dict[str, Any]) -> None:
        self.live.pop(request_id, None)
        keys = [LEASES, ENTRIES, PROGRESS, USAGE_STREAM]
        if not await self._settle(keys=keys, args=[request_id, orjson.dumps(record)]):
            log.warning("request was reaped before it settled", extra={"request_id": request_id})

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

    async def maintain(self, interval: float) -> None:
        """Renew this process's leases and reap dead peers' requests, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
                if reaped := await self.reap():
                    log.warning("reaped requests of a lost gateway", extra={"count": reaped})
            except aioredis.RedisError:
                log.exception("in-flight maintenance failed")
