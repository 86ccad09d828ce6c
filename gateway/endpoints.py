"""The gateway's paths other than inference: /healthz, /readyz, /metrics, /v1/models and
/v1/usage. GatewayApp (gateway/app.py) hands them every path that is not an inference
endpoint; a path that is none of these is a 404 here.
"""

import asyncio
import hmac
import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg_pool import PoolTimeout

from customers.models import LIMIT_FIELDS
from gateway import errors, metrics
from gateway.auth import Principal
from gateway.clients import Clients
from gateway.limits import Limits, Standing
from gateway.pricing import Budget, pico_amount, shown
from gateway.request_context import header
from gateway.responses import Send, send_json
from metering.selectors import usage_recent, usage_totals

# These lines were logged from gateway/app.py; they keep its logger name.
log = logging.getLogger("gateway.app")


async def endpoint_serve(
    c: Clients, metrics_token: bytes | None, scope: dict[str, Any], send: Send, rid: str
) -> None:
    """Answer a path that is not an inference endpoint (405 or 404 where it is not served)."""
    path, method = scope["path"], scope["method"]
    if path == "/healthz":
        return await send_json(send, 200, {"status": "ok"}, rid)
    if path == "/readyz":
        return await _ready(c, send, rid)
    if path == "/metrics":
        return await _metrics(c, metrics_token, scope, send, rid)
    if path not in ("/v1/models", "/v1/usage"):
        raise errors.not_found(path)
    if method != "GET":
        raise errors.method_not_allowed(method)
    principal = await c.auth.authenticate(header(scope, b"authorization"))
    if path == "/v1/models":
        return await _models(c, principal, send, rid)
    await send_json(send, 200, await _usage(c, principal), rid)


async def _metrics(
    c: Clients, metrics_token: bytes | None, scope: dict[str, Any], send: Send, rid: str
) -> None:
    if metrics_token is not None and not hmac.compare_digest(
        header(scope, b"authorization") or b"", metrics_token
    ):
        raise errors.invalid_api_key("A valid metrics token is required.")
    try:
        energy = await c.redis.hgetall(metrics.ENERGY_LIVE)
    except aioredis.RedisError:
        log.warning("fleet energy figures unavailable for /metrics", exc_info=True)
        energy = {}
    body = metrics.render(energy, await _journal_sizes(c))
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


async def _journal_sizes(c: Clients) -> dict[str, tuple[int, int]]:
    """Per shard of the usage stream: events waiting for the meter, requests in flight."""
    try:
        sizes = await asyncio.gather(
            *(
                asyncio.gather(c.redis.xlen(shard.stream), c.redis.zcard(shard.leases))
                for shard in c.journal.shards
            )
        )
    except aioredis.RedisError:
        log.warning("usage stream sizes unavailable for /metrics", exc_info=True)
        return {}
    return {
        shard.tag: (int(events), int(live))
        for shard, (events, live) in zip(c.journal.shards, sizes, strict=True)
    }


async def _models(c: Clients, principal: Principal, send: Send, rid: str) -> None:
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "token-factory"}
        for model in c.router.models()
        if principal.may_use(model)
    ]
    await send_json(send, 200, {"object": "list", "data": data}, rid)


async def _usage(c: Clients, principal: Principal) -> dict[str, Any]:
    """The caller's own limits, where it stands against them, and its recent usage: its
    account's (every project's), and under `project` its key's project's own; a prepaid
    account's credit under `credits` (null for an account billed in arrears)."""
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    account, project = principal.account_id, principal.project_id
    currency = c.limiter.currency  # the spend counter's: billing's
    try:
        standing, project_standing = await c.limiter.standings(
            account_id=account,
            project_id=project,
            now=now,
            currency=currency,
            prepaid=principal.prepaid,
        )
        async with c.pool.connection(timeout=2.0) as conn:
            usage, project_usage = {}, {}
            for period, since in (("today", today), ("this_month", month)):
                usage[period] = await usage_totals(conn, account_id=account, since=since)
                project_usage[period] = await usage_totals(
                    conn, account_id=account, since=since, project_id=project
                )
            recent = await usage_recent(conn, account_id=account, since=month, limit=20)
    except (aioredis.RedisError, psycopg.Error, PoolTimeout) as exc:
        log.warning("usage read failed", exc_info=True)
        raise errors.unavailable(
            "Usage cannot be read right now; retry shortly.", code="usage_unavailable"
        ) from exc
    return {
        "object": "usage",
        "tier": principal.tier,
        **_standing(principal.limits, principal.budget, standing, currency),
        "credits": None if standing.credit is None else standing.credit.shown(currency),
        "usage": usage,
        "recent": recent,
        # Limits null here are the account's; remaining is shown where the project has its own.
        "project": {
            "id": project,
            "name": principal.project_name,
            **_standing(
                principal.project_limits, principal.project_budget, project_standing, currency
            ),
            "usage": project_usage,
        },
    }


def _standing(
    limits: Limits, budget: Budget | None, standing: Standing, currency: str
) -> dict[str, Any]:
    """One level's limits, what is left of them, its spend and its budget."""
    spent = pico_amount(standing.spent_this_month)
    return {
        "limits": {name: getattr(limits, name) for name in LIMIT_FIELDS},
        "remaining": {
            "requests_per_minute": _left(limits.requests_per_minute, standing.requests_last_minute),
            "tokens_per_minute": _left(limits.tokens_per_minute, standing.tokens_last_minute),
            "tokens_today": _left(limits.tokens_per_day, standing.tokens_today),
            "tokens_this_month": _left(limits.tokens_per_month, standing.tokens_this_month),
            "concurrent_requests": _left(limits.max_concurrent_requests, standing.running),
        },
        # Money as exact decimal strings; spend counts requests in flight at their most.
        "spend": {"currency": currency, "this_month": shown(spent)},
        "budget": None if budget is None else _budget(budget, spent, currency),
    }


def _budget(budget: Budget, spent: Decimal, currency: str) -> dict[str, Any]:
    """The budget as the gateway applies it: one in another currency than the spend's (from
    before budgets had to be in billing's) has no remaining and no hard cap enforced."""
    comparable = budget.currency == currency
    return {
        "monthly_limit": f"{budget.monthly_limit:f}",
        "currency": budget.currency,
        "hard_cap": budget.hard_cap and comparable,
        "remaining": shown(max(budget.monthly_limit - spent, Decimal(0))) if comparable else None,
    }


async def _ready(c: Clients, send: Send, rid: str) -> None:
    checks: dict[str, str] = {}
    try:
        await c.redis.ping()
        checks["redis"] = "ok"
    except aioredis.RedisError as exc:
        checks["redis"] = f"error: {exc}"
    try:
        async with c.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {exc}"
    checks["backends"] = str(len(c.router.models()))
    ready = checks["redis"] == "ok" and checks["postgres"] == "ok"
    await send_json(send, 200 if ready else 503, {"ready": ready, "checks": checks}, rid)


def _left(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(0, limit - used)
