"""GET /metrics: request, token, latency and shedding figures by tier, and fleet energy."""

import json

import openai
import redis

from tests.support.gateway import scrape
from tests.support.servers import Server
from tests.support.tenants import MODEL, Tenant


def test_requests_and_tokens_are_counted_by_tier(gateway: Server, tenant: Tenant) -> None:
    labels = frozenset({"tier": "premium", "model": MODEL, "outcome": "ok"}.items())
    before = scrape(gateway).get(("tf_requests_total", labels), 0.0)
    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)
    reply = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=7
    )
    after = scrape(gateway)
    assert after[("tf_requests_total", labels)] == before + 1
    completion = frozenset({"tier": "premium", "model": MODEL, "kind": "completion"}.items())
    assert reply.usage is not None
    assert after[("tf_tokens_total", completion)] >= reply.usage.completion_tokens
    tier = frozenset({"tier": "premium"}.items())
    assert after[("tf_queue_wait_seconds_count", tier)] >= 1


def test_fleet_power_and_tokens_per_watt_come_from_the_collectors_figures(
    gateway: Server, redis_client: redis.Redis
) -> None:
    figures = {"power_w": 1350.5, "tokens_per_s": 2700.0, "tokens_per_watt": 2.0, "at": 0}
    redis_client.hset("{energy}:live", "sim-metrics", json.dumps(figures))
    redis_client.hset("{energy}:live", "sim-broken", "not json")
    first = {"power_w": 220.0, "tokens_per_s": None, "tokens_per_watt": None, "at": 0}
    redis_client.hset("{energy}:live", "sim-first", json.dumps(first))
    try:
        samples = scrape(gateway)
    finally:
        redis_client.hdel("{energy}:live", "sim-metrics", "sim-broken", "sim-first")
    backend = frozenset({"backend": "sim-metrics"}.items())
    assert samples[("tf_backend_power_watts", backend)] == 1350.5
    assert samples[("tf_backend_tokens_per_watt", backend)] == 2.0
    assert samples[("tf_backend_tokens_per_second", backend)] == 2700.0
    assert ("tf_backend_power_watts", frozenset({"backend": "sim-broken"}.items())) not in samples
    # Right after its first scrape a backend has a power reading but no token rate yet.
    fresh = frozenset({"backend": "sim-first"}.items())
    assert samples[("tf_backend_power_watts", fresh)] == 220.0
    assert ("tf_backend_tokens_per_watt", fresh) not in samples
