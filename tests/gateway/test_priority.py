"""Priority admission through the gateway (P4): premium first, free shed, queue wait metered."""

import json
import threading
import time
from collections.abc import Iterator

import openai
import pytest
import redis
from django.conf import settings

from fleet.models import Backend
from fleet.services import backend_register
from gateway.queueing import CLASSES, pool_keys
from metering.redis_clients import redis_connect
from tests.support.gateway import wait_routable
from tests.support.http import call, stream_request
from tests.support.ledger import usage_for
from tests.support.servers import Server
from tests.support.tenants import MODEL, UPSTREAM_MODEL, Tenant, tenant_create
from tests.support.waiting import wait_until

NARROW = "llama-narrow"  # served by one backend that runs one sequence at a time
CHAT = [{"role": "user", "content": "hi"}]
pytestmark = [pytest.mark.usefixtures("gateway"), pytest.mark.redis_cluster]


@pytest.fixture(scope="module")
def narrow(simulator: Server, gateway: Server) -> Iterator[None]:
    backend = backend_register(
        name="narrow",
        base_url=simulator.url,
        upstream_model=UPSTREAM_MODEL,
        public_models=[NARROW],
        max_concurrent_sequences=1,
    )
    wait_routable(gateway, tenant_create().key, NARROW)
    yield
    Backend.objects.filter(pk=backend.pk).update(enabled=False)


def wait_queued(client: redis.Redis, count: int, what: str) -> None:
    """Until `count` requests wait in the narrow model's queue (in any priority class)."""
    classes = pool_keys(NARROW)[3 : 3 + CLASSES]
    wait_until(lambda: sum(client.zcard(key) for key in classes) == count, what=what)


def sdk(gateway: Server, tenant: Tenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)


@pytest.mark.usefixtures("narrow")
def test_premium_waiting_behind_a_full_backend_goes_before_free(
    gateway: Server, simulator: Server
) -> None:
    free, premium = tenant_create("free"), tenant_create("premium")
    call(
        "POST",
        simulator.url + "/_sim/faults",
        json.dumps({"kind": "stall", "seconds": 30, "after_tokens": 1}).encode(),
    )
    holder, _ = stream_request(gateway.url, tenant_create("premium").key, NARROW)
    queue = redis_connect(settings.REDIS_URL)
    finished: list[tuple[str, str]] = []

    def ask(name: str, tenant: Tenant) -> None:
        completion = sdk(gateway, tenant).chat.completions.create(
            model=NARROW, messages=CHAT, max_tokens=2
        )
        finished.append((name, completion._request_id or ""))

    threads = [threading.Thread(target=ask, args=("free", free))]
    threads[0].start()
    wait_queued(queue, 1, "the free request to queue")
    threads.append(threading.Thread(target=ask, args=("premium", premium)))
    threads[1].start()
    wait_queued(queue, 2, "the premium request to queue behind it")
    queue.close()
    # Kept a sleep, the scenario: both wait a while, which their records' queue_wait_ms show.
    time.sleep(0.2)
    holder.close()  # the stalled stream ends; its slot goes to the queue
    for thread in threads:
        thread.join(10)
    call("DELETE", simulator.url + "/_sim/faults")
    assert [name for name, _ in finished] == ["premium", "free"]
    for _, request_id in finished:
        [record] = usage_for(request_id)
        # Both waited for the stalled stream's slot (how long depends on how soon the
        # thread's request got out on a busy machine).
        assert record.queue_wait_ms > 50


@pytest.mark.usefixtures("narrow")
def test_free_traffic_waiting_past_its_queue_timeout_is_shed_unbilled(
    gateway: Server, simulator: Server
) -> None:
    free = tenant_create("free")  # the free tier waits at most 2 s
    call(
        "POST",
        simulator.url + "/_sim/faults",
        json.dumps({"kind": "stall", "seconds": 30, "after_tokens": 1}).encode(),
    )
    holder, _ = stream_request(gateway.url, tenant_create("premium").key, NARROW)
    try:
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as shed:
            sdk(gateway, free).chat.completions.create(model=NARROW, messages=CHAT)
        assert 1.5 < time.monotonic() - started < 5
        assert shed.value.code == "server_overloaded"
        assert int(shed.value.response.headers["retry-after"]) >= 1
        usage = call("GET", gateway.url + "/v1/usage", key=free.key).json()
        assert usage["remaining"]["tokens_today"] == free.account.tier.tokens_per_day
    finally:
        holder.close()
        call("DELETE", simulator.url + "/_sim/faults")


def test_service_tier_is_echoed_and_can_only_lower_the_class(
    gateway: Server, simulator: Server
) -> None:
    premium = sdk(gateway, tenant_create("premium"))
    own = premium.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    assert own.service_tier == "priority"
    lowered = premium.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=1, service_tier="flex"
    )
    assert lowered.service_tier == "flex"
    free = sdk(gateway, tenant_create("free"))
    raised = free.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=1, service_tier="priority"
    )
    assert raised.service_tier == "flex"
    stream = free.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, stream=True)
    assert {chunk.service_tier for chunk in stream} == {"flex"}
    # The backend was asked to schedule by class (vLLM `priority`, lower first).
    recent = call("GET", simulator.url + "/_sim/stats?recent=1").json()["recent"]
    assert recent[-1]["body"]["priority"] == 2


def test_an_unknown_service_tier_is_a_400(gateway: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway, tenant_create("premium")).chat.completions.create(
            model=MODEL, messages=CHAT, service_tier="platinum"
        )
    assert caught.value.param == "service_tier"
