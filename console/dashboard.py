"""The figures behind the staff dashboard: one JSON document, polled by the page.

Traffic, latency and money come from PostgreSQL (the usage ledger and the billing tables; the
month so far by tier as the finance report shows it);
queues and the fleet's power from Redis, where the gateway and the collector keep them;
shedding from the gateway's own Prometheus counters (every worker's, in multiprocess mode).
"""

import functools
import logging
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import redis
from django.conf import settings

from billing.report_forms import month_by_tier
from billing.selectors import billing_currency
from config.db_routing import reading
from customers.models import Tier
from fleet.models import Backend
from gateway import metrics
from gateway.queueing import CLASSES, pool_keys
from metering.redis_clients import redis_connect

log = logging.getLogger(__name__)

_SQL = Path(__file__).parent / "sql"
_TRAFFIC = (_SQL / "dashboard_traffic.sql").read_text()
_TTFT = (_SQL / "dashboard_ttft.sql").read_text()
_TOP_ACCOUNTS = (_SQL / "dashboard_top_accounts.sql").read_text()
_MARGINS = (_SQL / "dashboard_margins.sql").read_text()
_INVOICES = (_SQL / "dashboard_invoices.sql").read_text()

TRAFFIC_MINUTES = 30
LATENCY_MINUTES = 15
MARGIN_DAYS = 30
TOP_ACCOUNTS_HOURS = 24


@functools.cache
def _redis() -> redis.Redis:
    return redis_connect(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def dashboard_data(*, now: datetime) -> dict[str, Any]:
    tiers = list(Tier.objects.order_by("priority").values_list("priority", "slug"))
    return {
        "at": now.isoformat(),
        # What each chart covers, so that the page can say so when one of them is empty.
        "windows": {
            "traffic_minutes": TRAFFIC_MINUTES,
            "latency_minutes": LATENCY_MINUTES,
            "margin_days": MARGIN_DAYS,
            "top_accounts_hours": TOP_ACCOUNTS_HOURS,
        },
        "traffic": _traffic(since=now - timedelta(minutes=TRAFFIC_MINUTES), now=now),
        "ttft": _rows(_TTFT, {"since": now - timedelta(minutes=LATENCY_MINUTES)}),
        "admission": _admission(dict(tiers)),
        "backends": _backends(),
        "margins": {
            dimension: _rows(
                _MARGINS, {"dimension": dimension, "since": now - timedelta(days=MARGIN_DAYS)}
            )
            for dimension in ("tier", "model")
        },
        "month": month_by_tier(
            period_start=now.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
            currency=billing_currency(),
        ),
        "top_accounts": _rows(
            _TOP_ACCOUNTS, {"since": now - timedelta(hours=TOP_ACCOUNTS_HOURS), "limit": 10}
        ),
        "invoices": _rows(_INVOICES, {}),
    }


def _rows(sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with reading().cursor() as cursor:
        cursor.execute(sql, params)
        names = [column.name for column in cursor.description]
        return [
            {name: _plain(value) for name, value in zip(names, row, strict=True)}
            for row in cursor.fetchall()
        ]


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _traffic(*, since: datetime, now: datetime) -> list[dict[str, Any]]:
    """Requests and tokens per second, every minute of the window: a minute without requests
    is a zero, so the chart's time axis is the same at every refresh."""
    counted = {
        datetime.fromisoformat(row["minute"]): row for row in _rows(_TRAFFIC, {"since": since})
    }
    first = since.replace(second=0, microsecond=0)
    minutes = int((now - first).total_seconds() // 60) + 1
    points = []
    for step in range(minutes):
        minute = first + timedelta(minutes=step)
        row = counted.get(minute, {"requests": 0, "tokens": 0})
        points.append(
            {
                "minute": minute.isoformat(),
                "requests_per_s": row["requests"] / 60,
                "tokens_per_s": int(row["tokens"]) / 60,
            }
        )
    return points


def _admission(tier_by_class: dict[int, str]) -> dict[str, Any]:
    """Requests waiting and running per model pool and tier, and shed/served counts by tier."""
    pools = sorted(
        {
            model
            for models in Backend.objects.values_list("public_models", flat=True)
            for model in models
        }
    )
    queues: list[dict[str, Any]] = []
    try:
        with _redis().pipeline(transaction=False) as pipe:
            for model in pools:
                keys = pool_keys(model)
                pipe.zcard(keys[0])
                for klass in range(CLASSES):
                    pipe.zcard(keys[3 + klass])
            replies = pipe.execute()
    except redis.RedisError:
        log.warning("queue depths unavailable", exc_info=True)
        replies = []
    step = 1 + CLASSES
    for index, model in enumerate(pools):
        counts = replies[index * step : (index + 1) * step]
        if not counts:
            break
        queues.append(
            {
                "model": model,
                "running": counts[0],
                "waiting": {
                    tier_by_class.get(klass, str(klass)): counts[1 + klass]
                    for klass in range(CLASSES)
                },
            }
        )
    return {"queues": queues, "by_tier": metrics.admission_counts()}


def _backends() -> list[dict[str, Any]]:
    try:
        live = _redis().hgetall(metrics.ENERGY_LIVE)
    except redis.RedisError:
        log.warning("live energy figures unavailable", exc_info=True)
        live = {}
    energy: dict[str, dict[str, Any]] = defaultdict(dict)
    for name, raw in live.items():
        try:
            energy[name.decode() if isinstance(name, bytes) else name] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
    return [
        {
            "name": backend.name,
            "enabled": backend.enabled,
            "health": backend.health,
            "capacity": backend.max_concurrent_sequences,
            "power_w": energy[backend.name].get("power_w"),
            "tokens_per_s": energy[backend.name].get("tokens_per_s"),
            "tokens_per_watt": energy[backend.name].get("tokens_per_watt"),
        }
        for backend in Backend.objects.order_by("name")
    ]
