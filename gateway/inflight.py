"""The in-flight journal: the gateway's half of exactly-once metering (promise P1).

Before a request is sent to a backend it gets an in-flight entry in Redis with a lease; when
it ends, one Lua call swaps the entry for a usage event on the meter's stream. A gateway that
dies (SIGKILL, OOM, lost machine) stops renewing its leases, and any gateway's reaper turns the
expired entries into `lost` usage events carrying the tokens last reported. So each request
that reached a backend yields exactly one usage event, and the meter stores each event once.

A final record always wins over that guess. A gateway that was only paused (or cut off from
Redis) past its lease still finishes its requests: their settles are retried until Redis
answers, and a settle that finds its entry reaped sends its record anyway, as a correction
that the meter writes over the `gateway_lost` row (metering.services.usage_insert_sql).
"""

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.batching import ScriptBatcher
from metering.events import JournalKeys, journal_of, journal_shards
from metering.redis_scripts import SCRIPTS, run_async

log = logging.getLogger(__name__)

_OPEN = SCRIPTS["inflight_open"]
_SETTLE = SCRIPTS["inflight_settle"]
_DROP = SCRIPTS["inflight_drop"]
_RENEW = SCRIPTS["inflight_renew"]
_REAP = SCRIPTS["inflight_reap"]
# A failed settle is sent again after this long, doubling up to the most.
_RETRY_FIRST_SECONDS = 0.1
_RETRY_MOST_SECONDS = 5.0
# A failed drop is tried this many times in all (about 25 s, within any sane lease).
_DROP_ATTEMPTS = 10


@dataclass(slots=True)
class Progress:
    """What this process knows of a live request, reported with each lease renewal."""

    completion_tokens: int = 0


@dataclass(slots=True)
class _Settle:
    """A settle that Redis has not yet confirmed."""

    request_id: str
    record: bytes
    attempts: int = 0
    retry: asyncio.TimerHandle | None = None


class InflightJournal:
    def __init__(
        self,
        client: aioredis.Redis,
        batcher: ScriptBatcher,
        *,
        lease_seconds: float,
        shards: int = 1,
    ) -> None:
        self.lease_seconds = lease_seconds
        # The journal's keys, named by the meter (metering/events.py): a request's entry and
        # its usage event are in its shard.
        self.shards = journal_shards(shards)
        self.live: dict[str, Progress] = {}
        # Settles that failed and wait for their next try, by request id.
        self.unsettled: dict[str, _Settle] = {}
        self._batcher = batcher
        self._client = client

    def open(
        self, request_id: str, entry: dict[str, Any]
    ) -> "tuple[Progress, asyncio.Future[Any]]":
        """Record that the request is in flight: its progress, renewed with its lease from
        now on, and a future that resolves once Redis has the entry. The call goes out with
        whatever else is queued, so the admission's round trip carries it (gateway/app.py);
        a request that is then not served is `drop`ped."""
        expiry = time.time() + self.lease_seconds
        progress = self.live[request_id] = Progress()
        args = (request_id, expiry, orjson.dumps(entry))
        keys = journal_of(request_id, self.shards)
        return progress, self._batcher.call(_OPEN, (keys.leases, keys.entries), args)

    def drop(self, request_id: str, *, attempts: int = 0) -> None:
        """Remove the entry of a request refused or shed before a backend saw it, at once, in
        the background. Should Redis not take it (unreachable, or a Cluster primary failing
        over), the drop is sent again, backing off as settles do, for up to _DROP_ATTEMPTS
        tries; after those, the lease, no longer renewed, lapses and the reaper records the
        request as lost (prompt estimate, no completion)."""
        self.live.pop(request_id, None)
        keys = journal_of(request_id, self.shards)
        dropped = self._batcher.call(
            _DROP, (keys.leases, keys.entries, keys.progress), (request_id,)
        )
        dropped.add_done_callback(functools.partial(self._dropped, request_id, attempts + 1))

    def _dropped(self, request_id: str, attempts: int, future: "asyncio.Future[Any]") -> None:
        if future.cancelled() or (exc := future.exception()) is None:
            return
        extra = {"request_id": request_id, "attempts": attempts}
        if attempts >= _DROP_ATTEMPTS:
            log.error(
                "could not drop the in-flight entry of a request not served; it will be "
                "recorded as lost",
                extra=extra,
                exc_info=exc,
            )
            return
        if _worth_logging(attempts):
            log.warning("could not drop a request's in-flight entry; retrying", extra=extra)
        future.get_loop().call_later(
            _retry_delay(attempts), functools.partial(self.drop, request_id, attempts=attempts)
        )

    def settle(self, request_id: str, record: dict[str, Any]) -> None:
        """Hand the finished request's record to the meter, in the background.

        Not awaited by the request, and sent with the next urgent Redis call (or within the
        batcher's linger): if this process dies first, the entry's lease lapses and the reaper
        records the request from what the lease last knew. The lease is no longer renewed
        from here on, so a settle that keeps failing cannot keep its request unrecorded.
        """
        self.live.pop(request_id, None)
        self._send(_Settle(request_id, orjson.dumps(record)))

    def _send(self, settle: _Settle) -> None:
        settle.retry = None
        args = (settle.request_id, settle.record)
        keys = _settle_keys(journal_of(settle.request_id, self.shards))
        sent = self._batcher.call(_SETTLE, keys, args, linger=not settle.attempts, durable=True)
        sent.add_done_callback(functools.partial(self._settled, settle))

    def _settled(self, settle: _Settle, future: "asyncio.Future[Any]") -> None:
        if future.cancelled():
            return
        request_id, settle.attempts = settle.request_id, settle.attempts + 1
        extra = {"request_id": request_id, "attempts": settle.attempts}
        if (exc := future.exception()) is None:
            self.unsettled.pop(request_id, None)
            if future.result() == 0:
                log.warning("settled a request already reaped: its record corrects", extra=extra)
            elif settle.attempts > 1:
                log.info("settled a request after retrying", extra=extra)
            return
        if _worth_logging(settle.attempts):
            log.warning("could not settle a request; retrying", extra=extra, exc_info=exc)
        settle.retry = future.get_loop().call_later(
            _retry_delay(settle.attempts), self._send, settle
        )
        self.unsettled[request_id] = settle

    def retry_now(self) -> None:
        """Send every settle waiting for a retry now (at shutdown, before the last flush)."""
        for settle in list(self.unsettled.values()):
            if settle.retry is not None:
                settle.retry.cancel()
                self._send(settle)

    async def renew(self) -> int:
        """Extend the leases of this process's live requests and report, for each, the
        completion tokens streamed so far and that it was alive now: what the reaper records
        should this process die. Returns how many leases were renewed."""
        if not self.live:
            return 0
        now = time.time()
        by_shard: dict[JournalKeys, list[Any]] = {}
        for request_id, progress in self.live.items():
            args = by_shard.setdefault(journal_of(request_id, self.shards), [])
            args += [request_id, f"{progress.completion_tokens} {now:.3f}"]
        renewed = await asyncio.gather(
            *(
                run_async(
                    self._client,
                    _RENEW,
                    (keys.leases, keys.progress),
                    [now + self.lease_seconds, *args],
                )
                for keys, args in by_shard.items()
            )
        )
        return sum(int(count) for count in renewed)

    async def reap(self, *, limit: int = 500) -> int:
        reaped = await asyncio.gather(
            *(
                run_async(self._client, _REAP, _settle_keys(keys), (time.time(), limit))
                for keys in self.shards
            )
        )
        return sum(int(count) for count in reaped)

    async def reap_lost(self) -> None:
        """Record the requests of dead peers whose leases lapsed (and log how many)."""
        if reaped := await self.reap():
            log.warning("reaped requests of a lost gateway", extra={"count": reaped})


def _retry_delay(attempts: int) -> float:
    """Seconds before the next try of a call that failed `attempts` times: doubling."""
    return float(min(_RETRY_FIRST_SECONDS * 2 ** (attempts - 1), _RETRY_MOST_SECONDS))


def _worth_logging(attempts: int) -> bool:
    """The 1st, 2nd, 4th, 8th... failure: enough to follow, not a flood."""
    return attempts & (attempts - 1) == 0


def _settle_keys(keys: JournalKeys) -> tuple[str, str, str, str]:
    """The keys of the scripts that end entries into usage events (settle, reap)."""
    return (keys.leases, keys.entries, keys.progress, keys.stream)


class VolatileRedis(Exception):
    """Redis keeps nothing across a restart, and this is production: refuse to start."""


_LOSSES = (
    "a Redis restart loses every usage record not yet stored in PostgreSQL (all of them while "
    "PostgreSQL is down) and the in-flight entries of requests whose gateway dies too, so those "
    "requests are never billed; quota, rate-limit and spend counters restart from the ledger"
)


async def persistence_check(
    client: aioredis.Redis, *, production: bool, allow_volatile: bool
) -> None:
    """Refuse a production Redis without an append-only file (raises VolatileRedis).

    The usage stream and this journal are the only copy of usage between a request's end and
    the meter's commit, so they must survive a Redis restart. A managed Redis may forbid
    CONFIG; then its persistence cannot be checked from here, only warned about.
    """
    try:
        reply = await client.config_get("appendonly")
    except aioredis.RedisError:
        log.warning(
            "cannot check that Redis persists (CONFIG GET refused or Redis away): %s", _LOSSES
        )
        return
    appendonly = {_text(key): _text(value) for key, value in reply.items()}.get("appendonly")
    if appendonly != "no":
        return
    if not production:
        log.info("Redis does not persist (appendonly no): fine for a local instance")
    elif allow_volatile:
        log.warning(
            "Redis does not persist (appendonly no) and GATEWAY_ALLOW_VOLATILE_REDIS is set: %s",
            _LOSSES,
        )
    else:
        raise VolatileRedis(
            f"Refusing to start: Redis does not persist (appendonly no): {_LOSSES}. Turn on "
            "AOF (appendonly yes, appendfsync everysec), or set "
            "GATEWAY_ALLOW_VOLATILE_REDIS=true to accept these losses."
        )


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
