"""The gateway's ASGI application: one request from arrival to usage hand-off.

    authenticate → read and check the body → pick backends → admit (limits + queue)
    → open the in-flight entry → forward (retrying while nothing was sent)
    → settle: the usage record goes to the meter

Plain ASGI on purpose: this path runs for every inference call, and a framework's request
objects and middleware stack cost more than the whole budget (see docs/benchmarks.md).
Shared clients (PostgreSQL pool, Redis, HTTP) are built once per process at lifespan start
(gateway/clients.py); the paths other than inference are in gateway/endpoints.py. One
request's state travels as one `Call` (gateway/request_context.py).
"""

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings

from gateway import errors, metrics
from gateway.admission import completion_cap, rate_limit_headers, refusal, tokens_to_reserve
from gateway.auth import Principal
from gateway.clients import Clients, clients_open
from gateway.endpoints import endpoint_serve
from gateway.errors import ApiError
from gateway.inflight import InflightJournal, Progress, VolatileRedis
from gateway.limits import Admission, Spend
from gateway.proxy import Forwarded
from gateway.queueing import Slot
from gateway.request_context import Call, header
from gateway.responses import Headers, Receive, Send, send_error
from gateway.routing import Backend
from gateway.spool import UsageSpool
from gateway.usage import UsageBounds, usage_bounds, usage_fallback, usage_record
from gateway.validation import (
    CLASS_NAMES,
    EMBEDDINGS,
    ENDPOINT_PATHS,
    InferenceRequest,
    request_parse,
)
from metering.events import request_ref

log = logging.getLogger(__name__)

_ENDPOINTS = {path: endpoint for endpoint, path in ENDPOINT_PATHS.items()}
PATH_PREFIXES = ("/v1/", "/healthz", "/readyz", "/metrics")


class GatewayApp:
    def __init__(self) -> None:
        self.c: Clients | None = None
        self.max_body = 0
        self.fifo = False
        self.metrics_token: bytes | None = None
        # Where a prepaid account whose credit ran out buys more ("" where the portal's
        # address is not configured: the refusal then names the page only).
        self.credits_url = ""

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
        clients = await clients_open()
        conf = settings.GATEWAY
        self.max_body = conf.max_body_bytes
        self.fifo = conf.admission == "fifo"
        if conf.metrics_token:
            self.metrics_token = b"Bearer " + conf.metrics_token.encode()
        if settings.PORTAL_BASE_URL:
            self.credits_url = settings.PORTAL_BASE_URL.rstrip("/") + "/portal/credits/"
        self.c = clients

    async def shutdown(self) -> None:
        if self.c is None:
            return
        await self.c.close()
        self.c = None

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        arrived = time.monotonic()
        request_id = uuid.uuid4()
        rid = request_ref(request_id)
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
        endpoint = _ENDPOINTS.get(scope["path"])
        if endpoint is None:  # health, readiness, metrics, models, usage; else 404
            return await endpoint_serve(self.c, self.metrics_token, scope, send, rid)
        if scope["method"] != "POST":
            raise errors.method_not_allowed(scope["method"])
        principal = await self.c.auth.authenticate(header(scope, b"authorization"))
        request = request_parse(endpoint, await self._body(scope, receive))
        backends = self._candidates(principal, request)
        reserve = _terms(principal, request)
        call = Call(
            request_id=request_id,
            rid=rid,
            key=str(request_id),
            arrived=arrived,
            send=send,
            receive=receive,
            principal=principal,
            request=request,
            backends=backends,
            reserve=reserve,
        )
        entry = _entry(call)
        # Limits, a backend slot and the in-flight entry, in one round trip; 429 where refused.
        opened = await self._admit(call, entry)
        if opened is None:  # Redis is away and the tier fails open
            return await self._serve_degraded(call, entry)
        slot, progress = opened
        try:
            await self._serve(call, self.c.journal, entry, progress)
        finally:
            self.c.queue.release(slot)

    async def _body(self, scope: dict[str, Any], receive: Receive) -> bytes:
        declared = header(scope, b"content-length")
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

    def _candidates(self, principal: Principal, request: InferenceRequest) -> list[Backend]:
        """The backends that may serve it, best first: 404 for a model the key may not use or
        no backend serves, 503 while none of those is up."""
        assert self.c is not None
        if not principal.may_use(request.model) or not self.c.router.serves(request.model):
            raise errors.model_not_found(request.model)
        backends = self.c.router.candidates(request.model)
        if not backends:
            raise errors.no_backend(request.model)
        return backends

    async def _admit(self, call: Call, entry: dict[str, Any]) -> tuple[Slot, Progress] | None:
        """Check the account's and the key's project's limits while queueing for a backend
        slot and opening the request's in-flight entry: the three calls share one Redis round
        trip. A request refused or shed then gives its place (or slot) and its entry back.
        Sets the call's rate, admission and slot; returns the slot and the request's
        progress, or None where Redis is unreachable and the tier fails open (the call is
        then served degraded)."""
        assert self.c is not None
        principal = call.principal
        now = datetime.now(UTC)
        # Spend is counted in billing's currency, whatever a (legacy) budget's currency says.
        currency = self.c.limiter.currency
        call.rate = self.c.prices.rate(
            currency=currency, tier=principal.tier, model=call.request.model, now=now
        )
        spend = _spend(call, currency)
        acquiring = asyncio.ensure_future(self._wait_for_slot(call))
        progress, opening = self.c.journal.open(call.key, entry)
        try:
            admission = await self.c.limiter.admit(
                account_id=principal.account_id,
                request_id=call.key,
                reserve=call.reserve,
                limits=principal.limits,
                now=now,
                spend=spend,
                project_id=principal.project_id,
                project_limits=principal.project_limits,
                prepaid=principal.prepaid,
            )
        except aioredis.RedisError as exc:
            self._abandon(acquiring)
            self._unopen(call, opening)
            log.warning("admission failed: Redis unavailable", exc_info=True)
            # Never a prepaid account: served unchecked, it would spend credit it may not have.
            if principal.fail_open and not principal.prepaid:
                return None
            raise errors.unavailable(
                "Limits cannot be checked right now; retry shortly.", code="limits_unavailable"
            ) from exc
        if not admission.admitted:
            self._abandon(acquiring)
            self._unopen(call, opening)
            refused = refusal(principal, admission, spend=spend, credits_url=self.credits_url)
            metrics.SHED.labels(principal.tier, refused.code or "refused").inc()
            raise refused
        try:
            call.slot = await self._slot(call, admission, acquiring)
        except ApiError:
            self._unopen(call, opening)
            raise
        call.admission = admission
        await self._opened(call, opening)
        return call.slot, progress

    async def _wait_for_slot(self, call: Call) -> Slot:
        assert self.c is not None
        request, principal = call.request, call.principal
        # First in, first out: one class, one "account", each request one step behind the last.
        fifo = self.fifo
        return await self.c.queue.acquire(
            model=request.model,
            request_id=call.key,
            klass=1 if fifo else request.served_class,
            account_id=0 if fifo else principal.account_id,
            cost=1 if fifo else call.reserve,
            capacity=self.c.router.capacity(request.model),
            depth=principal.queue_depth,
            patience=principal.queue_timeout,
        )

    async def _slot(
        self, call: Call, admission: Admission, acquiring: "asyncio.Future[Slot]"
    ) -> Slot:
        """The slot an admitted request queued for; shed (429) or Redis gone (503), its
        admission is given back: the request is not served and not billed."""
        assert self.c is not None
        try:
            return await acquiring
        except (ApiError, aioredis.RedisError) as exc:
            self.c.limiter.settle(admission, request_id=call.key, used=0)
            if isinstance(exc, ApiError):
                exc.headers = _headers(call.principal, admission) + exc.headers
                metrics.SHED.labels(call.principal.tier, exc.code or "shed").inc()
                raise
            log.warning("queueing failed: Redis unavailable", exc_info=True)
            raise errors.unavailable(
                "Admission is unavailable right now; retry shortly.", code="queue_unavailable"
            ) from exc

    def _abandon(self, acquiring: "asyncio.Future[Slot]") -> None:
        """Give up a slot request whose limits refused it, wherever it has got to."""
        assert self.c is not None
        if not acquiring.done():
            acquiring.cancel()
        elif not acquiring.cancelled() and acquiring.exception() is None:
            self.c.queue.release(acquiring.result())

    def _unopen(self, call: Call, opening: "asyncio.Future[Any]") -> None:
        """Take back the in-flight entry of a request that will not be served."""
        assert self.c is not None
        # Its outcome is the drop's to report (or, where the open failed, nothing to undo).
        opening.add_done_callback(_retrieved)
        if opening.done() and not opening.cancelled() and opening.exception() is not None:
            self.c.journal.live.pop(call.key, None)
        else:
            self.c.journal.drop(call.key)

    async def _opened(self, call: Call, opening: "asyncio.Future[Any]") -> None:
        """Wait for Redis to confirm the in-flight entry; where it cannot, the request gives
        its admission and slot back and is refused (503): no byte goes to a backend unless a
        dead gateway's request would still be recorded."""
        assert self.c is not None and call.admission is not None and call.slot is not None
        try:
            await opening
        except aioredis.RedisError as exc:
            log.warning("in-flight open failed", exc_info=True)
            self.c.journal.live.pop(call.key, None)
            self.c.limiter.settle(call.admission, request_id=call.key, used=0)
            self.c.queue.release(call.slot)
            raise errors.unavailable(
                "Usage metering is unavailable; retry shortly.", code="metering_unavailable"
            ) from exc

    async def _serve_degraded(self, call: Call, entry: dict[str, Any]) -> None:
        """Redis is away and the tier fails open: a local cap, metering through the spool."""
        assert self.c is not None
        self.c.fail_open.take()
        try:
            try:
                progress = await self.c.spool.open(call.key, entry)
            except OSError as exc:
                log.warning("in-flight open failed", exc_info=True)
                raise errors.unavailable(
                    "Usage metering is unavailable; retry shortly.", code="metering_unavailable"
                ) from exc
            await self._serve(call, self.c.spool, entry, progress)
        finally:
            self.c.fail_open.give_back()

    async def _serve(
        self,
        call: Call,
        journal: InflightJournal | UsageSpool,
        entry: dict[str, Any],
        progress: Progress,
    ) -> None:
        """Forward (retrying while nothing was sent), then settle."""
        assert self.c is not None
        admission = call.admission
        entry["queue_wait_ms"] = call.waited_ms
        headers = () if admission is None else _headers(call.principal, admission)
        bounds = usage_bounds(call.request)
        forwarded = Forwarded(call.backends[0], 500, "backend_error")
        try:
            forwarded = await self.c.proxy.forward(
                call.request,
                call.backends,
                request_id=call.rid,
                headers=headers,
                send=call.send,
                receive=call.receive,
                progress=progress,
            )
        finally:
            self._settle(call, journal, _record(entry, forwarded, progress, call.arrived, bounds))

    def _settle(
        self, call: Call, journal: InflightJournal | UsageSpool, record: dict[str, Any]
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
        admission, rate = call.admission, call.rate
        if admission is None:
            return
        try:
            used = record["prompt_tokens"] + record["completion_tokens"]
            spent = 0 if rate is None else rate.cost_of(record)
            self.c.limiter.settle(admission, request_id=key, used=used, spent=spent)
        except Exception:
            self.c.limiter.live.pop(key, None)  # its slot is freed when its lease lapses
            log.exception("could not settle a request's limits", extra={"request_id": key})


def _retrieved(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()


def _terms(principal: Principal, request: InferenceRequest) -> int:
    """Fix the class it is served in and its completion cap (400 beyond the plan's caps);
    returns the tokens to reserve for it."""
    # `service_tier` may lower the class a request is served in, never raise it.
    own_class = min(principal.priority, len(CLASS_NAMES) - 1)
    request.served_class = max(own_class, request.requested_class or own_class)
    cap = completion_cap(
        request, principal.limits, principal.project_limits, principal.project_name
    )
    if cap is not None and request.max_tokens is None and request.endpoint != EMBEDDINGS:
        request.body["max_tokens"] = cap  # the plan's cap holds even when none was asked
    return tokens_to_reserve(request, cap)


def _spend(call: Call, currency: str) -> Spend:
    """The most the request can cost (its prompt's bound and completion cap) and the hard caps
    of its account and its project, in pico-units of `currency`."""
    rate, prompt, reserve = call.rate, call.request.prompt_tokens_bound, call.reserve
    most = 0 if rate is None else rate.most(prompt=prompt, completion=reserve - prompt)
    principal = call.principal
    caps = [
        None if budget is None else budget.cap_in(currency, account_id=principal.account_id)
        for budget in (principal.budget, principal.project_budget)
    ]
    return Spend(currency, most, *caps)


def _headers(principal: Principal, admission: Admission) -> Headers:
    return rate_limit_headers(principal.limits, admission, principal.project_limits)


def _entry(call: Call) -> dict[str, Any]:
    """The usage record as known before the backend call: the request's in-flight entry."""
    request, principal = call.request, call.principal
    return {
        "request_id": call.key,
        "account_id": principal.account_id,
        "project_id": principal.project_id,
        "api_key_id": principal.api_key_id,
        "tier": principal.tier,
        "model": request.model,
        "backend": call.backends[0].name,
        "endpoint": request.endpoint,
        "streamed": request.stream,
        "started_at": time.time() - (time.monotonic() - call.arrived),
        "prompt_tokens": request.prompt_tokens_estimate,
        # Known once a slot is granted; a lost request's record says 0.
        "queue_wait_ms": 0.0,
    }


def _record(
    entry: dict[str, Any],
    forwarded: Forwarded,
    progress: Progress,
    arrived: float,
    bounds: UsageBounds,
) -> dict[str, Any]:
    """The usage record; the gateway's own count where the backend's cannot be used."""
    try:
        return usage_record(entry, forwarded, progress, arrived, bounds)
    except Exception:
        log.exception(
            "usage record failed; recording the gateway's count",
            extra={"request_id": entry["request_id"]},
        )
        return usage_fallback(entry, forwarded, progress, arrived)
