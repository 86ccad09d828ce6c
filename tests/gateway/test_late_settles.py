"""A final record always wins over a `gateway_lost` guess (promise P1).

A gateway paused past its lease is reaped while its streams are still running; when it
resumes, the streams finish and their final records replace the reaper's guesses. A gateway
whose Redis restarts while its requests finish retries their settles until Redis answers.
"""

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from django.conf import settings

from metering.consumer import Meter
from metering.models import UsageRecord
from simulator.testing import parse_sse
from tests.support.gateway import in_flight, progress_reported
from tests.support.http import Reply, call
from tests.support.ledger import drain
from tests.support.redis_server import RedisServer
from tests.support.servers import Server, gateway_env, start_gateway
from tests.support.tenants import MODEL, Tenant
from tests.support.waiting import wait_until

TOKENS = 40
STREAMS = 8


def arm_stall(sim: Server, *, seconds: float, count: int) -> None:
    """The next `count` answers stop for `seconds` after their 5th token."""
    fault = {"kind": "stall", "seconds": seconds, "after_tokens": 5, "count": count}
    assert call("POST", sim.url + "/_sim/faults", json.dumps(fault).encode()).status == 200


def start_streams(pool: ThreadPoolExecutor, gateway: Server, tenant: Tenant) -> list[Future[Reply]]:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": TOKENS,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    url = gateway.url + "/v1/chat/completions"
    return [pool.submit(call, "POST", url, body, tenant.key) for _ in range(STREAMS)]


def delivered(reply: Reply) -> int:
    """Tokens the client received, after checking the stream ended whole with its usage."""
    assert reply.status == 200
    events = parse_sse(reply.body)
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["completion_tokens"] == TOKENS
    return sum(1 for e in events[:-2] if e["choices"][0]["delta"].get("content"))


@pytest.fixture
def sim(simulator: Server) -> Iterator[Server]:
    call("DELETE", simulator.url + "/_sim/faults")
    yield simulator
    call("DELETE", simulator.url + "/_sim/faults")


def test_a_gateway_paused_past_its_lease_ends_with_the_tokens_it_delivered(
    sim: Server, gateway: Server, tenant: Tenant, redis_client: redis.Redis
) -> None:
    """SIGSTOP for longer than the lease: the other gateway reaps the streams as lost with
    the 5 tokens last reported; after SIGCONT they finish and the ledger holds what the
    clients received."""
    paused = start_gateway({**gateway_env(), "GATEWAY_LEASE_SECONDS": "2"})
    records = UsageRecord.objects.filter(account_id=tenant.account.pk)
    try:
        arm_stall(sim, seconds=4, count=STREAMS)
        with ThreadPoolExecutor(STREAMS) as pool:
            replies = start_streams(pool, paused, tenant)
            wait_until(
                lambda: (
                    [tokens for tokens, _ in progress_reported(redis_client, tenant.account.pk)]
                    == [5] * STREAMS
                ),
                what="every stream to send 5 tokens and a renewal to report them",
            )
            paused.process.send_signal(signal.SIGSTOP)
            try:

                def all_lost() -> bool:
                    drain()
                    return records.filter(outcome="gateway_lost").count() == STREAMS

                wait_until(
                    all_lost, timeout=20, interval=0.2, what="the paused gateway's streams reaped"
                )
                assert set(records.values_list("completion_tokens", flat=True)) == {5}
            finally:
                paused.process.send_signal(signal.SIGCONT)
            tokens = [delivered(reply.result(timeout=30)) for reply in replies]
        assert tokens == [TOKENS] * STREAMS

        def all_final() -> bool:
            drain()
            return records.filter(outcome="ok").count() == STREAMS

        wait_until(
            all_final,
            timeout=20,
            interval=0.2,
            what="the final records to replace the gateway_lost ones",
        )
        assert records.count() == STREAMS
        assert {(r.completion_tokens, r.tokens_estimated, r.status_code) for r in records} == {
            (TOKENS, False, 200)
        }
    finally:
        paused.stop()


@pytest.mark.parametrize("appendonly", [True, False], ids=["aof", "no-persistence"])
def test_settles_that_fail_while_redis_restarts_are_retried_until_it_answers(
    sim: Server, fleet: None, tenant: Tenant, tmp_path: Path, appendonly: bool
) -> None:
    """Redis dies while streams run and comes back (with its AOF, or empty) after they have
    finished: every stream still ends with its final record, none with a guess."""
    own = RedisServer(tmp_path, appendonly=appendonly)
    # A long lease: the records must come from the retried settles, not from the reaper.
    gateway = start_gateway({**gateway_env(), "REDIS_URL": own.url, "GATEWAY_LEASE_SECONDS": "10"})
    meter = Meter(
        redis.Redis.from_url(own.url),
        batch_size=settings.METERING["BATCH_SIZE"],
        claim_idle_seconds=settings.METERING["CLAIM_IDLE_SECONDS"],
    )
    records = UsageRecord.objects.filter(account_id=tenant.account.pk)
    client = redis.Redis.from_url(own.url)
    try:
        arm_stall(sim, seconds=2, count=STREAMS)
        with ThreadPoolExecutor(STREAMS) as pool:
            replies = start_streams(pool, gateway, tenant)
            wait_until(
                lambda: len(in_flight(client, tenant.account.pk)) == STREAMS,
                what="every stream to be in flight (they stall 2 s after 5 tokens)",
            )
            own.kill()
            tokens = [delivered(reply.result(timeout=30)) for reply in replies]
        assert tokens == [TOKENS] * STREAMS  # answered in full while Redis was away
        # Kept a sleep, the scenario: Redis stays away a while after the streams ended, and
        # the settles fail meanwhile.
        time.sleep(1.0)
        own.start()

        def all_final() -> bool:
            meter.drain()
            return records.filter(outcome="ok").count() == STREAMS

        wait_until(
            all_final, timeout=20, interval=0.2, what="the settles to be retried until stored"
        )
        assert records.count() == STREAMS
        assert {(r.completion_tokens, r.tokens_estimated) for r in records} == {(TOKENS, False)}
    finally:
        gateway.stop()
        meter.client.close()
        client.close()
        own.kill()
