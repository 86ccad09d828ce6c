"""Usage events put on the stream by hand, and meters run in this process, for the meter's
tests."""

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import redis
from django.db import connection

from metering.consumer import Meter
from metering.events import FINAL, USAGE_GROUP, USAGE_STREAM
from metering.models import UsageRecord
from tests.support.events import usage as event_usage

# These tests commit their records (live_db): an account id no tenant of another test has.
ACCOUNT_ID = 10**12


def usage(**overrides: Any) -> dict[str, Any]:
    return event_usage(**{"account_id": ACCOUNT_ID, **overrides})


def final(**overrides: Any) -> dict[bytes, bytes]:
    return {b"kind": FINAL, b"record": orjson.dumps(usage(**overrides))}


def put(client: redis.Redis, fields: dict[Any, Any]) -> bytes:
    """Append an event to the usage stream, as a gateway does; returns its stream id."""
    stream_id: Any = client.xadd(USAGE_STREAM, fields)
    return bytes(stream_id)


def request_id(fields: dict[bytes, bytes]) -> str:
    return str(orjson.loads(fields[b"record"])["request_id"])


def stored_once(events: list[dict[bytes, bytes]]) -> bool:
    ids = [request_id(fields) for fields in events]
    return UsageRecord.objects.filter(request_id__in=ids).count() == len(ids) and all(
        UsageRecord.objects.filter(request_id=rid).count() == 1 for rid in ids
    )


def consumers(client: redis.Redis) -> set[str]:
    replies: Any = client.xinfo_consumers(USAGE_STREAM, USAGE_GROUP)
    return {reply["name"].decode() for reply in replies}


def new_meter(client: redis.Redis, claim_idle_seconds: float = 30.0) -> Meter:
    name = f"test-{uuid.uuid4().hex[:8]}"
    return Meter(client, batch_size=100, claim_idle_seconds=claim_idle_seconds, name=name)


@contextmanager
def running(meter: Meter) -> Iterator[None]:
    """The meter's long-running loop on a thread, stopped (and joined) on the way out."""
    stop = threading.Event()

    def work() -> None:
        try:
            meter.run(stop)
        finally:
            connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the meter did not stop"
