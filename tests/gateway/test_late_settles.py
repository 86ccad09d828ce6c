"""A final record always wins over a `gateway_lost` guess (promise P1).

A gateway paused past its lease is reaped while its streams are still running; when it
resumes, the streams finish and their final records replace the reaper's guesses. A gateway
whose Redis restarts while its requests finish retries their settles until Redis answers.
"""

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from django.conf import settings

from metering.consumer import Meter
from metering.models import UsageRecord
from simulator.testing import parse_sse
from tests.conftest import MODEL, Tenant, drain, gateway_env
from tests.http import Reply, call
from tests.servers import Server, free_port, start_gateway

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


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture
def sim(simulator: Server) -> Iterator[Server]:
    call("DELETE", simulator.url + "/_sim/faults")
    yield simulator
    call("DELETE", simulator.url + "/_sim/faults")


def test_a_gateway_paused_past_its_lease_ends_with_the_tokens_it_delivered(
    sim: Server, gateway: Server, tenant: Tenant
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
            time.sleep(1.5)  # every stream has sent 5 tokens and a renewal reported them
            paused.process.send_signal(signal.SIGSTOP)
            try:

                def all_lost() -> bool:
                    drain()
                    return records.filter(outcome="gateway_lost").count() == STREAMS

                wait_until(all_lost, "the paused gateway's streams were not reaped")
                assert set(records.values_list("completion_tokens", flat=True)) == {5}
            finally:
                paused.process.send_signal(signal.SIGCONT)
            tokens = [delivered(reply.result(timeout=30)) for reply in replies]
        assert tokens == [TOKENS] * STREAMS

        def all_final() -> bool:
            drain()
            return records.filter(outcome="ok").count() == STREAMS

        wait_until(all_final, "the final records did not replace the gateway_lost ones")
        assert records.count() == STREAMS
        assert {(r.completion_tokens, r.tokens_estimated, r.status_code) for r in records} == {
            (TOKENS, False, 200)
        }
    finally:
        paused.stop()


class RedisServer:
    """A redis-server of the test's own, with or without an append-only file, restartable."""

    def __init__(self, directory: Path, *, appendonly: bool, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        self.args += ["--dir", str(directory), "--save", ""]
        self.args += ["--appendonly", "yes" if appendonly else "no", *extra]
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


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
    try:
        arm_stall(sim, seconds=2, count=STREAMS)
        with ThreadPoolExecutor(STREAMS) as pool:
            replies = start_streams(pool, gateway, tenant)
            time.sleep(1.0)  # all in flight, stalled after 5 tokens
            own.kill()
            tokens = [delivered(reply.result(timeout=30)) for reply in replies]
        assert tokens == [TOKENS] * STREAMS  # answered in full while Redis was away
        time.sleep(1.0)  # settles fail meanwhile
        own.start()

        def all_final() -> bool:
            meter.drain()
            return records.filter(outcome="ok").count() == STREAMS

        wait_until(all_final, "the settles were not retried")
        assert records.count() == STREAMS
        assert {(r.completion_tokens, r.tokens_estimated) for r in records} == {(TOKENS, False)}
    finally:
        gateway.stop()
        meter.client.close()
        own.kill()
