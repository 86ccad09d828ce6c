"""What a running gateway shows of itself: the models it routes, its /metrics, its requests in
flight (the in-flight journal in Redis, gateway/inflight.py)."""

from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from gateway.limits import account_keys
from metering.events import INFLIGHT_ENTRIES, INFLIGHT_PROGRESS
from tests.support.http import call
from tests.support.servers import Server
from tests.support.waiting import wait_until


def routable(gateway: Server, key: str, model: str) -> bool:
    """Whether `gateway` lists `model` in its /v1/models for `key`."""
    reply = call("GET", gateway.url + "/v1/models", key=key)
    return reply.status == 200 and model in {m["id"] for m in reply.json()["data"]}


def wait_routable(gateway: Server, key: str, model: str, timeout: float = 10.0) -> None:
    """Until `gateway` routes `model`: gateways re-read the backend table every half second
    in tests, all of it in one query, so by then it has read every change committed before
    the backend serving `model` was (registered, or given `model` as another name)."""
    wait_until(
        lambda: routable(gateway, key, model),
        timeout=timeout,
        what=f"{gateway.url} to route {model}",
    )


def scrape(gateway: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    reply = call("GET", gateway.url + "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }


def in_flight(client: redis.Redis, account_id: int) -> dict[bytes, dict[str, Any]]:
    """The in-flight entries of the account's requests, by request id."""
    entries: dict[bytes, bytes] = client.hgetall(INFLIGHT_ENTRIES)  # type: ignore[assignment]
    parsed = {request_id: orjson.loads(entry) for request_id, entry in entries.items()}
    return {rid: entry for rid, entry in parsed.items() if entry["account_id"] == account_id}


def progress_reported(client: redis.Redis, account_id: int) -> list[tuple[int, float]]:
    """What lease renewals last reported of each of the account's requests in flight: the
    completion tokens so far, and when (seconds after the request started). None yet for a
    request not renewed yet."""
    entries = in_flight(client, account_id)
    ids = list(entries)
    progress: list[Any] = client.hmget(INFLIGHT_PROGRESS, ids) if ids else []  # type: ignore[assignment]
    reported = []
    for request_id, value in zip(ids, progress, strict=True):
        if value is not None:
            tokens, seen = value.split()
            reported.append((int(tokens), float(seen) - entries[request_id]["started_at"]))
    return reported


def slots_held(client: redis.Redis, account_id: int) -> int:
    """The account's concurrency slots held: each request holds one from its admission until
    its settle has landed (gateway/lua/limits_settle.lua settles the tokens at the same time)."""
    return int(client.zcard(account_keys(account_id, datetime.now(UTC))[6]))
