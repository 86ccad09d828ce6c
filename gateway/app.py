"""The gateway's ASGI application: one request from arrival to usage hand-off.

    authenticate → read and check the body → pick backends → open the in-flight entry
    → forward (retrying while nothing was sent) → settle: the usage record goes to the meter

Plain ASGI on purpose: this path runs for every inference call, and a framework's request
objects and middleware stack cost more than the whole budget (see docs/benchmarks.md).
Shared clients (PostgreSQL pool, Redis, HTTP) are built once per process at lifespan start.
"""

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import aiohttp
import psycopg
import redis.asyncio as aioredis
from django.conf import settings
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway import errors, metrics
from gateway.admission import completion_cap, rate_limit_headers, refusal, tokens_to_reserve
from gateway.auth import Authenticator, Principal
from gateway.batching import ScriptBatcher
from gateway.errors import ApiError
from gateway.inflight import InflightJournal, VolatileRedis, persistence_check
from gateway.limits import Admission, Limiter, Spend
from gateway.pricing import (
    PriceList,
    Rate,
    billing_currency,
    micro_amount,
    micro_nearest,
    micro_up,
)
from gateway.proxy import Forwarded, Proxy
from gateway.queueing import AdmissionQueue, Slot
from gateway.responses import Receive, Send, send_error, send_json
from gateway.routing import Backend, Router
from gateway.spool import FailOpenCap, UsageSpool
from gateway.usage import usage_bounds, usage_fallback, usage_record
from gateway.validation import (
    CLASS_NAMES,
    EMBEDDINGS,
    ENDPOINT_PATHS,
    InferenceRequest,
    request_parse,
)
from metering.selectors import usage_recent, usage_totals

log = logging.getLogger(__name__)

_ENDPOINTS = {path: endpoint for endpoint, path in ENDPOINT_PATHS.items()}
PATH_PREFIXES = ("/v1/", "/healthz", "/readyz", "/metrics")
# A settle waits up to this long for an urgent Redis call to share a pipeline with.
_SETTLE_LINGER = 0.005


@dataclass(slots=True)
class _Clients:
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


class GatewayApp:
    def __init__(self) -> None:
        self.c: _Clients | None = None
        self.max_body = 0
        self.fifo = False
        self.metrics_token: bytes | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except VolatileRedis as refusal:
                    log.critical(str(refusal))
                    await send({"type": "lifespan.startup.failed", "message": ""})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        conf = settings.GATEWAY
        # Batching keeps the connections in use to a handful; the cap is only a guard.
        client = aioredis.Redis.from_url(
            settings.REDIS_URL, max_connections=conf["REDIS_MAX_CONNECTIONS"]
        )
        await persistence_check(
            client,
            production=not settings.LOCAL,
            allow_volatile=conf["ALLOW_VOLATILE_REDIS"],
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
            sock_connect=conf["BACKEND_CONNECT_TIMEOUT"],
            sock_read=conf["BACKEND_READ_TIMEOUT"],
        )
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        router = Router(pool, eject_seconds=conf["BACKEND_EJECT_SECONDS"])
        prices = PriceList(pool)
        batcher = ScriptBatcher(client, linger=_SETTLE_LINGER)
        journal = InflightJournal(client, batcher, lease_seconds=conf["LEASE_SECONDS"])
        currency = billing_currency()
        limiter = Limiter(client, batcher, lease_seconds=conf["LEASE_SECONDS"], currency=currency)
        queue = AdmissionQueue(client, batcher, lease_seconds=conf["LEASE_SECONDS"])
        spool = UsageSpool(conf["SPOOL_DIR"], pool)
        try:
            await router.refresh()
            await prices.refresh()
            # Requests of gateways that died while none was running are recorded now.
            await journal.reap()
            await limiter.rebuild_if_empty(pool)
        except Exception:
            log.exception("startup refresh failed; retrying in the background")
        interval = min(conf["LEASE_SECONDS"] / 3, conf["REAPER_INTERVAL_SECONDS"])
        tasks = [
            asyncio.create_task(_every(conf["BACKENDS_REFRESH_SECONDS"], router.refresh)),
            asyncio.create_task(_every(conf.get("PRICES_REFRESH_SECONDS", 5.0), prices.refresh)),
            asyncio.create_task(_every(interval, journal.maintain)),
            asyncio.create_task(_every(interval, limiter.renew)),
            asyncio.create_task(_every(min(interval, 1.0), queue.maintain)),
            asyncio.create_task(_forever(queue.listen)),
            asyncio.create_task(_every(interval, partial(limiter.rebuild_if_empty, pool))),
            asyncio.create_task(_every(1.0, spool.replay)),
        ]
        self.max_body = conf["MAX_BODY_BYTES"]
        self.fifo = conf["ADMISSION"] == "fifo"
        if conf["METRICS_TOKEN"]:
            self.metrics_token = b"Bearer " + conf["METRICS_TOKEN"].encode()
        self.c = _Clients(
            pool=pool,
            redis=client,
            session=session,
            auth=Authenticator(
                pool,
                cache_seconds=conf["KEY_CACHE_SECONDS"],
                stale_seconds=conf["KEY_STALE_SECONDS"],
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
                concurrency=conf["FAIL_OPEN_CONCURRENCY"],
                per_minute=conf["FAIL_OPEN_REQUESTS_PER_MINUTE"],
            ),
            proxy=Proxy(session, router, max_attempts=conf["MAX_ATTEMPTS"]),
            tasks=tasks,
        )

    async def shutdown(self) -> None:
        if self.c is None:
            return
        for task in self.c.tasks:
            task.cancel()
        self.c.journal.retry_now()
        await self.c.batcher.idle()
        if self.c.journal.unsettled:
            log.error(
                "shut down with settles Redis never confirmed; the reaper records them as lost",
                extra={"request_ids": list(self.c.journal.unsettled)},
            )
        await self.c.session.close()
        await self.c.redis.aclose()
        await self.c.pool.close()
        self.c = None

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        arrived = time.monotonic()
        request_id = uuid.uuid4()
        rid = f"req_{request_id.hex}"
        try:
            await self._route(scope, receive, send, arrived, request_id, rid)
        except ApiError as error:
            await send_error(send, error, rid)

    async def _route(
        self,
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        arrived: float,
        request_id: uuid.UUID,
        rid: str,
    ) -> None:
        assert self.c is not None, "the ASGI server must run the lifespan protocol"
        path, method = scope["path"], scope["method"]
        if path == "/healthz":
            return await send_json(send, 200, {"status": "ok"}, rid)
        if path == "/readyz":
            return await self._ready(send, rid)
        if path == "/metrics":
            return await self._metrics(scope, send, rid)
        endpoint = _ENDPOINTS.get(path)
        if endpoint is None and path not in ("/v1/models", "/v1/usage"):
            raise errors.not_found(path)
        expected = "POST" if endpoint else "GET"
        if method != expected:
            raise errors.method_not_allowed(method)
        principal = await self.c.auth.authenticate(_header(scope, b"authorization"))
        if path == "/v1/models":
            return await self._models(principal, send, rid)
        if endpoint is None:
            return await send_json(send, 200, await self._usage(principal), rid)
        request = request_parse(endpoint, await self._body(scope, receive))
        if not principal.may_use(request.model) or not self.c.router.serves(request.model):
            raise errors.model_not_found(request.model)
        backends = self.c.router.candidates(request.model)
        if not backends:
            raise errors.no_backend(request.model)
        # `service_tier` may lower the class a request is served in, never raise it.
        own_class = min(principal.priority, len(CLASS_NAMES) - 1)
        request.served_class = max(own_class, request.requested_class or own_class)
        cap = completion_cap(request, principal.limits)
        if cap is not None and request.max_tokens is None and request.endpoint != EMBEDDINGS:
            request.body["max_tokens"] = cap  # the plan's cap holds even when none was asked
        key = str(request_id)
        reserve = tokens_to_reserve(request, cap)
        now = datetime.now(UTC)
        rate = self.c.prices.rate(
            currency=principal.currency, tier=principal.tier, model=request.model, now=now
        )
        # Queue for a backend slot while the limits are checked: both calls share one Redis
        # round trip; a refused request then gives its place (or slot) back.
        acquiring = asyncio.ensure_future(self._wait_for_slot(request, principal, key, reserve))
        try:
            admission = await self.c.limiter.admit(
                account_id=principal.account_id,
                request_id=key,
                reserve=reserve,
                limits=principal.limits,
                now=now,
                spend=_spend(principal, rate, request.prompt_tokens_bound, reserve),
            )
        except aioredis.RedisError as exc:
            self._abandon(acquiring)
            log.warning("admission failed: Redis unavailable", exc_info=True)
            if principal.fail_open:
                return await self._serve_degraded(
                    request, principal, backends, arrived, request_id, rid, send, receive
                )
            raise errors.unavailable(
                "Limits cannot be checked right now; retry shortly.", code="limits_unavailable"
            ) from exc
        if not admission.admitted:
            self._abandon(acquiring)
            refused = refusal(principal.limits, admission, principal.budget)
            metrics.SHED.labels(principal.tier, refused.code or "refused").inc()
            raise refused
        try:
            slot = await acquiring
        except (ApiError, aioredis.RedisError) as exc:
            # Shed, or Redis went away: the request is not served and not billed.
            self.c.limiter.settle(admission, request_id=key, used=0)
            if isinstance(exc, ApiError):
                exc.headers = rate_limit_headers(principal.limits, admission) + exc.headers
                metrics.SHED.labels(principal.tier, exc.code or "shed").inc()
                raise
            log.warning("queueing failed: Redis unavailable", exc_info=True)
            raise errors.unavailable(
                "Admission is unavailable right now; retry shortly.", code="queue_unavailable"
            ) from exc
        try:
            await self._serve(
                request,
                principal,
                admission,
                rate,
                slot.waited_ms,
                self.c.journal,
                backends,
                arrived,
                request_id,
                rid,
                send,
                receive,
            )
        finally:
            self.c.queue.release(slot)

    async def _serve_degraded(
        self,
        request: InferenceRequest,
        principal: Principal,
        backends: list[Backend],
        arrived: float,
        request_id: uuid.UUID,
        rid: str,
        send: Send,
        receive: Receive,
    ) -> None:
        """Redis is away and the tier fails open: a local cap, metering through the spool."""
        assert self.c is not None
        self.c.fail_open.take()
        try:
            await self._serve(
                request,
                principal,
                None,
                None,
                0.0,
                self.c.spool,
                backends,
                arrived,
                request_id,
                rid,
                send,
                receive,
            )
        finally:
            self.c.fail_open.give_back()

    async def _wait_for_slot(
        self, request: InferenceRequest, principal: Principal, key: str, reserve: int
    ) -> Slot:
        assert self.c is not None
        # First in, first out: one class, one "account", each request one step behind the last.
        fifo = self.fifo
        return await self.c.queue.acquire(
            model=request.model,
            request_id=key,
            klass=1 if fifo else request.served_class,
            account_id=0 if fifo else principal.account_id,
            cost=1 if fifo else reserve,
            capacity=self.c.router.capacity(request.model),
            depth=principal.queue_depth,
            patience=principal.queue_timeout,
        )

    def _abandon(self, acquiring: "asyncio.Future[Slot]") -> None:
        """Give up a slot request whose limits refused it, wherever it has got to."""
        assert self.c is not None
        if not acquiring.done():
            acquiring.cancel()
        elif not acquiring.cancelled() and acquiring.exception() is None:
            self.c.queue.release(acquiring.result())

    async def _serve(
        self,
        request: InferenceRequest,
        principal: Principal,
        admission: Admission | None,
        rate: Rate | None,
        waited_ms: float,
        journal: InflightJournal | UsageSpool,
        backends: list[Backend],
        arrived: float,
        request_id: uuid.UUID,
        rid: str,
        send: Send,
        receive: Receive,
    ) -> None:
        assert self.c is not None
        key = str(request_id)
        entry = {
            "request_id": key,
            "account_id": principal.account_id,
            "api_key_id": principal.api_key_id,
            "tier": principal.tier,
            "model": request.model,
            "backend": backends[0].name,
            "endpoint": request.endpoint,
            "streamed": request.stream,
            "started_at": time.time() - (time.monotonic() - arrived),
            "prompt_tokens": request.prompt_tokens_estimate,
            "queue_wait_ms": waited_ms,
        }
        headers = () if admission is None else rate_limit_headers(principal.limits, admission)
        bounds = usage_bounds(request)
        try:
            progress = await journal.open(key, entry)
        except (aioredis.RedisError, OSError) as exc:
            log.warning("in-flight open failed", exc_info=True)
            if admission is not None:
                self.c.limiter.settle(admission, request_id=key, used=0)
            raise errors.unavailable(
                "Usage metering is unavailable; retry shortly.", code="metering_unavailable"
            ) from exc
        forwarded = Forwarded(backends[0], 500, "backend_error")
        try:
            forwarded = await self.c.proxy.forward(
                request,
                backends,
                request_id=rid,
                headers=headers,
                send=send,
                receive=receive,
                progress=progress,
            )
        finally:
            try:
                record = usage_record(entry, forwarded, progress, arrived, bounds)
            except Exception:
                log.exception(
                    "usage record failed; recording the gateway's count", extra={"request_id": key}
                )
                record = usage_fallback(entry, forwarded, progress, arrived)
            self._settle(journal, record, admission, rate)

    def _settle(
        self,
        journal: InflightJournal | UsageSpool,
        record: dict[str, Any],
        admission: Admission | None,
        rate: Rate | None,
    ) -> None:
        """Hand the record to the meter, count it, give back its reservations. Never raises.

        It runs in a `finally` once the client has its answer: an exception here would skip
        the steps after it, and one before the journal's settle left the request unrecorded
        while its lease was still being renewed. A step that fails is logged; what it left
        undone lapses with the request's leases (the reaper records a request whose settle
        never started, from what its lease knew).
        """
        assert self.c is not None
        key = record["request_id"]
        try:
            journal.settle(key, record)
        except Exception:
            journal.live.pop(key, None)  # stop renewing its lease: the reaper records it
            log.exception("could not hand a usage record over", extra={"request_id": key})
        try:
            metrics.observe(record)
        except Exception:
            log.exception("could not count a request in /metrics", extra={"request_id": key})
        if admission is None:
            return
        try:
            used = record["prompt_tokens"] + record["completion_tokens"]
            spent = 0 if rate is None else micro_nearest(_cost(rate, record))
            self.c.limiter.settle(admission, request_id=key, used=used, spent=spent)
        except Exception:
            self.c.limiter.live.pop(key, None)  # its slot is freed when its lease lapses
            log.exception("could not settle a request's limits", extra={"request_id": key})

    async def _metrics(self, scope: dict[str, Any], send: Send, rid: str) -> None:
        assert self.c is not None
        if self.metrics_token is not None and not hmac.compare_digest(
            _header(scope, b"authorization") or b"", self.metrics_token
        ):
            raise errors.invalid_api_key("A valid metrics token is required.")
        try:
            energy = await self.c.redis.hgetall(metrics.ENERGY_LIVE)
        except aioredis.RedisError:
            log.warning("fleet energy figures unavailable for /metrics", exc_info=True)
            energy = {}
        body = metrics.render(energy)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", metrics.CONTENT_TYPE),
                    (b"x-request-id", rid.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _models(self, principal: Principal, send: Send, rid: str) -> None:
        assert self.c is not None
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "token-factory"}
            for model in self.c.router.models()
            if principal.may_use(model)
        ]
        await send_json(send, 200, {"object": "list", "data": data}, rid)

    async def _usage(self, principal: Principal) -> dict[str, Any]:
        """The caller's own limits, where it stands against them, and its recent usage."""
        assert self.c is not None
        now = datetime.now(UTC)
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        month = today.replace(day=1)
        account = principal.account_id
        try:
            standing = await self.c.limiter.peek(
                account_id=account, now=now, currency=principal.currency
            )
            async with self.c.pool.connection(timeout=2.0) as conn:
                usage_today = await usage_totals(conn, account_id=account, since=today)
                usage_month = await usage_totals(conn, account_id=account, since=month)
                recent = await usage_recent(conn, account_id=account, since=month, limit=20)
        except (aioredis.RedisError, psycopg.Error, PoolTimeout) as exc:
            log.warning("usage read failed", exc_info=True)
            raise errors.unavailable(
                "Usage cannot be read right now; retry shortly.", code="usage_unavailable"
            ) from exc
        limits, budget = principal.limits, principal.budget
        spent = micro_amount(standing.spent_this_month)
        return {
            "object": "usage",
            "tier": principal.tier,
            "limits": {
                "requests_per_minute": limits.requests_per_minute,
                "tokens_per_minute": limits.tokens_per_minute,
                "tokens_per_day": limits.tokens_per_day,
                "tokens_per_month": limits.tokens_per_month,
                "max_concurrent_requests": limits.max_concurrent_requests,
                "max_tokens_per_request": limits.max_tokens_per_request,
                "max_context_tokens": limits.max_context_tokens,
            },
            "remaining": {
                "requests_per_minute": _left(
                    limits.requests_per_minute, standing.requests_last_minute
                ),
                "tokens_per_minute": _left(limits.tokens_per_minute, standing.tokens_last_minute),
                "tokens_today": _left(limits.tokens_per_day, standing.tokens_today),
                "tokens_this_month": _left(limits.tokens_per_month, standing.tokens_this_month),
                "concurrent_requests": _left(limits.max_concurrent_requests, standing.running),
            },
            # Money as decimal strings; spend counts requests in flight at their most.
            "spend": {"currency": principal.currency, "this_month": f"{spent:f}"},
            "budget": None
            if budget is None
            else {
                "monthly_limit": f"{budget.monthly_limit:f}",
                "currency": budget.currency,
                "hard_cap": budget.hard_cap,
                "remaining": f"{max(budget.monthly_limit - spent, Decimal(0)):f}",
            },
            "usage": {"today": usage_today, "this_month": usage_month},
            "recent": recent,
        }

    async def _body(self, scope: dict[str, Any], receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise errors.body_too_large(self.max_body)
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise errors.body_too_large(self.max_body)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _ready(self, send: Send, rid: str) -> None:
        assert self.c is not None
        checks: dict[str, str] = {}
        try:
            await self.c.redis.ping()
            checks["redis"] = "ok"
        except aioredis.RedisError as exc:
            checks["redis"] = f"error: {exc}"
        try:
            async with self.c.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"error: {exc}"
        checks["backends"] = str(len(self.c.router.models()))
        ready = checks["redis"] == "ok" and checks["postgres"] == "ok"
        await send_json(send, 200 if ready else 503, {"ready": ready, "checks": checks}, rid)


def _spend(principal: Principal, rate: Rate | None, prompt: int, reserve: int) -> Spend:
    """The most the request can cost (its prompt's bound and completion cap) and the hard cap."""
    most = 0 if rate is None else micro_up(rate.most(prompt=prompt, completion=reserve - prompt))
    budget = principal.budget
    return Spend(principal.currency, most, None if budget is None else budget.cap)


def _cost(rate: Rate, record: dict[str, Any]) -> int:
    return rate.cost(
        prompt=record["prompt_tokens"],
        cached=record["cached_prompt_tokens"],
        completion=record["completion_tokens"],
        reasoning=record["reasoning_tokens"],
    )


def _left(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(0, limit - used)


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


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None
