"""The gateway's Prometheus metrics (`GET /metrics`).

Request counters and latency histograms are updated in-process (a few microseconds a request).
With several worker processes, set PROMETHEUS_MULTIPROC_DIR (`tf up` does) and every worker
answers for all of them. Fleet energy figures are not the gateway's own: the telemetry
collector keeps each backend's latest power and tokens per watt in Redis (`{energy}:live`)
and they are read at scrape time.
"""

import os
from collections.abc import Mapping
from typing import Any

import orjson
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

ENERGY_LIVE = "{energy}:live"
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

REQUESTS = Counter(
    "tf_requests",
    "Inference requests that reached a backend, by tier, model and outcome.",
    ["tier", "model", "outcome"],
)
TOKENS = Counter("tf_tokens", "Tokens metered, by tier, model and kind.", ["tier", "model", "kind"])
TTFT = Histogram(
    "tf_time_to_first_token_seconds",
    "Time from arrival at the gateway to the first token, by tier.",
    ["tier"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "tf_queue_wait_seconds",
    "Time spent waiting for a backend slot, by tier.",
    ["tier"],
    buckets=(0.0, *_LATENCY_BUCKETS),
)
SHED = Counter(
    "tf_shed_requests",
    "Requests refused by admission (rate limits, quotas, queue timeout or depth), by tier.",
    ["tier", "reason"],
)

UNREPLICATED = Counter(
    "tf_redis_unreplicated_settles",
    "Settles a Redis Cluster primary answered with no replica confirming them within 200 ms "
    "(its replica is away or was promoted): a failover of that primary now could lose them.",
)

USAGE_ANOMALIES = Counter(
    "tf_usage_anomalies",
    "Usage reports refused as impossible (not integers, negative, beyond the request's limits) "
    "and replaced by the gateway's own count, by backend.",
    ["backend"],
)


def observe(record: dict[str, Any]) -> None:
    """Count a finished request from its usage record."""
    tier, model = record["tier"], record["model"]
    if "usage_anomaly" in record:
        USAGE_ANOMALIES.labels(record["backend"]).inc()
    REQUESTS.labels(tier, model, record["outcome"]).inc()
    TOKENS.labels(tier, model, "prompt").inc(record["prompt_tokens"])
    TOKENS.labels(tier, model, "completion").inc(record["completion_tokens"])
    QUEUE_WAIT.labels(tier).observe(record["queue_wait_ms"] / 1000)
    if record["ttft_ms"] is not None:
        TTFT.labels(tier).observe(record["ttft_ms"] / 1000)


def render(energy_live: Mapping[Any, Any], journal_sizes: Mapping[str, tuple[int, int]]) -> bytes:
    """The exposition text: this process's (or every worker's) metrics plus fleet energy and
    the usage streams' sizes (events waiting, requests in flight, by shard)."""
    if _MULTIPROCESS:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        own = generate_latest(registry)
    else:
        own = generate_latest(REGISTRY)
    fleet = _energy_registry(energy_live)
    _journal_gauges(fleet, journal_sizes)
    return own + generate_latest(fleet)


def _journal_gauges(registry: CollectorRegistry, sizes: Mapping[str, tuple[int, int]]) -> None:
    waiting = Gauge(
        "tf_usage_stream_events",
        "Usage events waiting in a shard's stream for the meter (all gateways'): a backlog "
        "that grows means the meters or PostgreSQL fall behind.",
        ["shard"],
        registry=registry,
    )
    live = Gauge(
        "tf_inflight_requests",
        "Requests in flight in a shard's journal (all gateways').",
        ["shard"],
        registry=registry,
    )
    for shard, (events, in_flight) in sizes.items():
        waiting.labels(shard).set(events)
        live.labels(shard).set(in_flight)


def _energy_registry(energy_live: Mapping[Any, Any]) -> CollectorRegistry:
    registry = CollectorRegistry()
    power = Gauge(
        "tf_backend_power_watts",
        "Latest power draw of a backend's GPUs (sum), from its DCGM exporter.",
        ["backend"],
        registry=registry,
    )
    per_watt = Gauge(
        "tf_backend_tokens_per_watt",
        "Tokens per second per watt (= tokens per joule) over a backend's last interval.",
        ["backend"],
        registry=registry,
    )
    rate = Gauge(
        "tf_backend_tokens_per_second",
        "Tokens per second over a backend's last telemetry interval.",
        ["backend"],
        registry=registry,
    )
    gauges = {"power_w": power, "tokens_per_watt": per_watt, "tokens_per_s": rate}
    for name, raw in energy_live.items():
        backend = name.decode() if isinstance(name, bytes) else str(name)
        try:
            figures = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # one malformed entry must not take the whole scrape down
        for field, gauge in gauges.items():
            value = figures.get(field) if isinstance(figures, dict) else None
            if isinstance(value, int | float):  # null: not known yet (first interval)
                gauge.labels(backend).set(value)
    return registry


def admission_counts() -> dict[str, dict[str, float]]:
    """Per tier: requests served (reached a backend) and refused, since the processes started."""
    registry = REGISTRY
    if _MULTIPROCESS:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    counts: dict[str, dict[str, float]] = {}
    for family in registry.collect():
        if family.name not in ("tf_requests", "tf_shed_requests"):
            continue
        field = "served" if family.name == "tf_requests" else "shed"
        for sample in family.samples:
            if sample.name.endswith("_total"):
                tier = counts.setdefault(sample.labels["tier"], {"served": 0.0, "shed": 0.0})
                tier[field] += sample.value
    return counts
