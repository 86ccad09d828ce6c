"""A meter stops promptly and leaves no consumer behind; a dead meter's consumer is removed by
the live ones once its events are claimed."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from metering.events import USAGE_GROUP, USAGE_STREAM
from tests.support.faults import TcpProxy
from tests.support.meter import consumers, final, new_meter, put, running, stored_once
from tests.support.servers import ROOT, gateway_env
from tests.support.waiting import wait_until


def start_meter(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`manage.py meter` as a process, once it reads from the stream."""
    meter = subprocess.Popen(
        [sys.executable, "manage.py", "meter"], cwd=ROOT, env={**os.environ, **env}
    )
    client = redis.Redis.from_url(settings.REDIS_URL)
    wait_until(
        lambda: consumer_of(meter) in known_consumers(client),
        timeout=30,
        what="the meter to start reading",
    )
    return meter


def consumer_of(meter: subprocess.Popen[bytes]) -> str:
    return f"{socket.gethostname()}-{meter.pid}"


def known_consumers(client: redis.Redis) -> set[str]:
    try:
        return consumers(client)
    except redis.ResponseError:  # no group yet
        return set()


def terminate(meter: subprocess.Popen[bytes]) -> float:
    """SIGTERM the meter; returns how long it took to exit."""
    started = time.monotonic()
    meter.send_signal(signal.SIGTERM)
    try:
        meter.wait(5)
    finally:
        if meter.poll() is None:
            meter.kill()
    return time.monotonic() - started


@pytest.fixture
def postgres_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(int(settings.DATABASES["default"]["PORT"] or 5432))
    yield proxy
    proxy.close()


def test_sigterm_stops_the_meter_within_a_second_and_removes_its_consumer(
    live_db: None, redis_client: redis.Redis
) -> None:
    meter = start_meter(gateway_env())
    event = final()
    put(redis_client, event)
    wait_until(lambda: stored_once([event]), timeout=15, what="the event to be stored once")

    took = terminate(meter)

    assert meter.returncode == 0
    assert took < 1.5, f"the meter took {took:.1f}s to stop"
    assert consumer_of(meter) not in consumers(redis_client)


def test_a_meter_stopped_while_postgres_is_away_hands_its_batch_to_another_at_once(
    live_db: None, redis_client: redis.Redis, postgres_proxy: TcpProxy
) -> None:
    env = gateway_env()
    db = settings.DATABASES["default"]
    env["DATABASE_URL"] = f"postgres://{db['USER']}@127.0.0.1:{postgres_proxy.port}/{db['NAME']}"
    env["METERING_CLAIM_IDLE_SECONDS"] = "30"
    meter = start_meter(env)
    postgres_proxy.cut()
    event = final()
    put(redis_client, event)
    name = consumer_of(meter)
    wait_until(
        lambda: redis_client.xpending_range(
            USAGE_STREAM, USAGE_GROUP, min="-", max="+", count=1, consumername=name
        ),
        timeout=15,
        what="the meter to read the event",
    )
    # Kept a sleep: the failed write and the wait to retry show nowhere outside the meter's
    # process; give the write through the cut proxy time to fail.
    time.sleep(0.3)

    took = terminate(meter)

    assert meter.returncode == 0
    # It gives its batch STOP_GRACE_SECONDS to finish before handing it back.
    assert took < 2.0, f"the meter took {took:.1f}s to stop"
    assert name in consumers(redis_client), "its batch is still pending on it"
    with running(new_meter(redis_client, claim_idle_seconds=30)):
        wait_until(lambda: stored_once([event]), timeout=5, what="another meter to take the batch")


def test_a_live_meter_removes_a_dead_meters_consumer_after_claiming_its_events(
    live_db: None, redis_client: redis.Redis
) -> None:
    events = [final() for _ in range(3)]
    meter = new_meter(redis_client, claim_idle_seconds=0.5)
    meter.ensure_group()
    for fields in events:
        put(redis_client, fields)
    redis_client.xreadgroup(USAGE_GROUP, "dead-meter", {USAGE_STREAM: ">"}, count=10)
    # Kept a sleep, the scenario: the dead meter's events go idle past claim_idle_seconds.
    time.sleep(0.6)

    with running(meter):
        wait_until(
            lambda: stored_once(events), timeout=15, what="the dead meter's events to be stored"
        )
        wait_until(
            lambda: "dead-meter" not in consumers(redis_client),
            timeout=5,
            what="the dead meter's consumer to be removed",
        )
        assert meter.name in consumers(redis_client)
    assert meter.name not in consumers(redis_client)
