"""Nothing in the settle path raises past it: whichever step fails (building the record, the
journal's settle, /metrics, the limits' settle, Redis refusing settles for a while), the
request ends with exactly one usage record.

The gateway runs in this process (uvicorn on a thread) so that a step can be made to fail;
requests still reach it over HTTP and go to the simulated backend.
"""

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import uvicorn

from gateway import metrics
from gateway.app import GatewayApp
from gateway.batching import Script, ScriptBatcher
from gateway.inflight import InflightJournal
from gateway.limits import Limiter
from metering.models import UsageRecord
from simulator.testing import parse_sse
from tests.support.http import call
from tests.support.ledger import drain
from tests.support.servers import free_port
from tests.support.tenants import MODEL, Tenant
from tests.support.waiting import wait_until

LEASE_SECONDS = 1.0


class InProcessGateway:
    def __init__(self) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(
            GatewayApp(), port=port, lifespan="on", log_config=None, access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

        def started() -> bool:
            assert self.thread.is_alive(), "the gateway's thread ended"
            return bool(self.server.started)

        wait_until(started, timeout=15, what="the in-process gateway to start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def inproc(fleet: None, settings: Any) -> Iterator[InProcessGateway]:
    settings.GATEWAY = {
        **settings.GATEWAY,
        "LEASE_SECONDS": LEASE_SECONDS,
        "REAPER_INTERVAL_SECONDS": 0.2,
        "KEY_CACHE_SECONDS": 1.0,
        "BACKENDS_REFRESH_SECONDS": 0.5,
    }
    gateway = InProcessGateway()
    yield gateway
    gateway.stop()


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected")


def settles_fail(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """The first `times` settle scripts fail as if Redis had gone away."""
    call_script = ScriptBatcher.call
    left = [times]

    def flaky(self: ScriptBatcher, script: Script, *args: Any, **kwargs: Any) -> Any:
        if script.name == "inflight_settle" and left[0] > 0:
            left[0] -= 1
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(redis.ConnectionError("injected: Redis went away"))
            return failed
        return call_script(self, script, *args, **kwargs)

    monkeypatch.setattr(ScriptBatcher, "call", flaky)


def stream(gateway: InProcessGateway, tenant: Tenant) -> tuple[str, int]:
    """A streamed chat of exactly 5 tokens; returns its request id and the tokens delivered."""
    body = (
        b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,'
        b' "ignore_eos": true, "stream": true}' % MODEL.encode()
    )
    reply = call("POST", gateway.url + "/v1/chat/completions", body, key=tenant.key)
    assert reply.status == 200, reply.body
    events = parse_sse(reply.body)
    assert events[-1] == "[DONE]"
    delivered = sum(1 for e in events[:-1] if e["choices"][0]["delta"].get("content"))
    return reply.headers["x-request-id"], delivered


def the_one_record(tenant: Tenant) -> UsageRecord:
    """The tenant's only usage record, once it exists and a few leases later (no second)."""
    records = UsageRecord.objects.filter(account_id=tenant.account.pk)

    def stored() -> bool:
        drain()
        return records.exists()

    wait_until(stored, timeout=10, interval=0.1, what="a usage record")
    # Kept a sleep, the scenario: a few leases lapse, so that a second record would be there
    # by now (an absence: nothing to poll for).
    time.sleep(3 * LEASE_SECONDS)
    drain()
    [record] = records
    return record


@pytest.mark.parametrize(
    ("step", "outcome", "estimated"),
    [
        ("building the record", "ok", True),
        ("the journal's settle", "gateway_lost", True),
        ("counting it in /metrics", "ok", False),
        ("the limits' settle", "ok", False),
        ("Redis refusing settles for a while", "ok", False),
    ],
)
def test_a_failure_at_any_settle_step_leaves_exactly_one_record(
    inproc: InProcessGateway,
    tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    outcome: str,
    estimated: bool,
) -> None:
    if step == "building the record":
        monkeypatch.setattr("gateway.app.usage_record", boom)
    elif step == "the journal's settle":
        monkeypatch.setattr(InflightJournal, "settle", boom)
    elif step == "counting it in /metrics":
        monkeypatch.setattr(metrics, "observe", boom)
    elif step == "the limits' settle":
        monkeypatch.setattr(Limiter, "settle", boom)
    else:
        settles_fail(monkeypatch, times=2)  # retried after 0.1 s and 0.2 s: within the lease

    request_id, delivered = stream(inproc, tenant)

    record = the_one_record(tenant)
    assert record.request_id.hex == request_id.removeprefix("req_")
    assert (record.outcome, record.tokens_estimated) == (outcome, estimated)
    if outcome == "ok":
        assert (record.status_code, record.completion_tokens) == (200, delivered)
