"""The gateway's shared clients: built once per process at lifespan start, closed at its end.

PostgreSQL pool, Redis, the HTTP session to the backends, and what is built on them (key
cache, backend and price lists, limits, admission queue, in-flight journal, spool), with the
background jobs that keep them fresh. Nothing here runs per request.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from django.conf import settings
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from gateway.auth import Authenticator
from gateway.batching import ScriptBatcher
from gateway.inflight import InflightJournal, persistence_check
from gateway.limits import Limiter
from gateway.pricing import PriceList
from gateway.proxy import Proxy
from gateway.queueing import AdmissionQueue
from gateway.routing import Router
from gateway.spool import FailOpenCap, UsageSpool
from metering.redis_clients import redis_connect_async

# These lines were logged from gateway/app.py; they keep its logger name.
log = logging.getLogger("gateway.app")

# A settle waits up to this long for an urgent Redis call to share a pipeline with.
_SETTLE_LINGER = 0.005


@dataclass(slots=True)
class Clients:
    pool: AsyncConnectionPool
    redis: aioredis.Redis
    session: aiohttp.ClientSession
    auth: Authenticator
    router: Router
    prices: PriceList
    batcher: ScriptBatcher
    limiter: Limiter
    queue: AdmissionQueue
    journal: InflightJournal
    spool: UsageSpool
    fail_open: FailOpenCap
    proxy: Proxy
    tasks: list[asyncio.Task[None]]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.journal.retry_now()
        await self.batcher.idle()
        self.batcher.close()
        if self.journal.unsettled:
            log.error(
                "shut down with settles Redis never confirmed; the reaper records them as lost",
                extra={"request_ids": list(self.journal.unsettled)},
            )
        await self.session.close()
        await self.redis.aclose()
        await self.pool.close()


async def clients_open() -> Clients:
    """Connect, refresh what the hot path reads, start the background jobs.

    Raises VolatileRedis where Redis would lose in-flight usage and that is not allowed.
    """
    conf = settings.GATEWAY
    # Batching keeps the connections in use to a handful; the cap is only a guard.
    client = redis_connect_async(settings.REDIS_URL, max_connections=conf.redis_max_connections)
    await persistence_check(
        client,
        production=not settings.LOCAL,
        allow_volatile=conf.allow_volatile_redis,
    )
    db = settings.DATABASES["default"]
    conninfo = make_conninfo(
        dbname=db["NAME"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        connect_timeout=2,
    )
    pool = AsyncConnectionPool(conninfo, min_size=1, max_size=4, open=False)
    await pool.open(wait=False)
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=conf.backend_connect_timeout,
        sock_read=conf.backend_read_timeout,
    )
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )
    router = Router(pool, eject_seconds=conf.backend_eject_seconds)
    prices = PriceList(pool)
    batcher = ScriptBatcher(client, linger=_SETTLE_LINGER)
    journal = InflightJournal(
        client, batcher, lease_seconds=conf.lease_seconds, shards=settings.METERING.shards
    )
    currency = settings.BILLING.currency
    limiter = Limiter(client, batcher, lease_seconds=conf.lease_seconds, currency=currency)
    queue = AdmissionQueue(client, batcher, lease_seconds=conf.lease_seconds)
    spool = UsageSpool(conf.spool_dir, pool)
    try:
        await router.refresh()
        await prices.refresh()
        # Requests of gateways that died while none was running are recorded now.
        await journal.reap()
        await limiter.rebuild_if_empty(pool)
    except Exception:
        log.exception("startup refresh failed; retrying in the background")
    interval = min(conf.lease_seconds / 3, conf.reaper_interval_seconds)
    progress_interval = min(interval, conf.progress_seconds)
    tasks = [
        asyncio.create_task(_every(conf.backends_refresh_seconds, router.refresh)),
        asyncio.create_task(_every(conf.prices_refresh_seconds, prices.refresh)),
        asyncio.create_task(_every(progress_interval, journal.renew)),
        asyncio.create_task(_every(interval, journal.reap_lost)),
        asyncio.create_task(_every(interval, limiter.renew)),
        asyncio.create_task(_every(min(interval, 1.0), queue.maintain)),
        asyncio.create_task(_forever(queue.listen)),
        asyncio.create_task(_every(interval, partial(limiter.rebuild_if_empty, pool))),
        asyncio.create_task(_every(1.0, spool.replay)),
    ]
    return Clients(
        pool=pool,
        redis=client,
        session=session,
        auth=Authenticator(
            pool,
            cache_seconds=conf.key_cache_seconds,
            stale_seconds=conf.key_stale_seconds,
            currency=currency,
        ),
        router=router,
        prices=prices,
        batcher=batcher,
        limiter=limiter,
        queue=queue,
        journal=journal,
        spool=spool,
        fail_open=FailOpenCap(
            concurrency=conf.fail_open_concurrency,
            per_minute=conf.fail_open_requests_per_minute,
        ),
        proxy=Proxy(session, router, max_attempts=conf.max_attempts),
        tasks=tasks,
    )


async def _every(interval: float, job: Callable[[], Awaitable[Any]]) -> None:
    """Run a background job every `interval` seconds until cancelled; a failure is logged."""
    name = getattr(job, "__qualname__", None) or repr(job)
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:
            log.exception("background job failed", extra={"job": name})


async def _forever(job: Callable[[], Awaitable[Any]]) -> None:
    """Keep a long-running job (a subscription) running, restarting it after a failure."""
    while True:
        try:
            await job()
        except Exception:
            log.exception("background job failed; restarting it in 1 s")
        await asyncio.sleep(1.0)
