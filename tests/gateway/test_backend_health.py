"""Backend health: the prober's verdict steers routing; silent backends time out as 504."""

import json
import uuid
from collections.abc import Iterator

import openai
import pytest

from fleet.models import Backend
from fleet.services import backend_register, backends_probe
from tests.support.gateway import wait_routable
from tests.support.http import call
from tests.support.ledger import usage_for
from tests.support.servers import Server, gateway_env, start_gateway, start_simulator
from tests.support.tenants import UPSTREAM_MODEL, Tenant

LONELY_MODEL = "llama-lonely"
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def own_simulator() -> Iterator[Server]:
    """A simulator of this module's own: its faults must not reach other tests' backends."""
    server = start_simulator("--model", UPSTREAM_MODEL, "--speedup", "20")
    yield server
    server.stop()


@pytest.fixture
def lonely(own_simulator: Server, fleet: None) -> Iterator[Backend]:
    """A model served by one backend only, so its health decides everything."""
    backend = backend_register(
        name="lonely",
        base_url=own_simulator.url,
        upstream_model=UPSTREAM_MODEL,
        public_models=[LONELY_MODEL],
    )
    yield backend
    call("DELETE", own_simulator.url + "/_sim/faults")
    Backend.objects.filter(pk=backend.pk).update(enabled=False)


def test_the_prober_marks_a_backend_that_fails_its_health_check(
    own_simulator: Server, lonely: Backend
) -> None:
    assert backends_probe()["lonely"] is True
    fault = json.dumps({"kind": "health", "status": 503}).encode()
    call("POST", own_simulator.url + "/_sim/faults", fault)
    assert backends_probe()["lonely"] is False
    lonely.refresh_from_db()
    assert lonely.health == "unhealthy" and lonely.health_checked_at is not None


def test_a_model_whose_backends_are_all_unhealthy_gets_503_with_retry_after(
    gateway: Server, tenant: Tenant, lonely: Backend
) -> None:
    # The verdict goes in with a name of the backend's that is new: once the gateway routes
    # that name, it has read the verdict too.
    alias = f"{LONELY_MODEL}-{uuid.uuid4().hex[:8]}"
    Backend.objects.filter(pk=lonely.pk).update(
        health="unhealthy", public_models=[LONELY_MODEL, alias]
    )
    wait_routable(gateway, tenant.key, alias)
    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        api.chat.completions.create(model=LONELY_MODEL, messages=CHAT)
    assert caught.value.status_code == 503
    assert caught.value.code == "backend_unavailable"
    assert caught.value.response.headers["retry-after"] == "1"


def test_a_backend_that_stays_silent_is_a_504_and_still_metered(
    own_simulator: Server, tenant: Tenant, lonely: Backend
) -> None:
    impatient = start_gateway({**gateway_env(), "GATEWAY_BACKEND_READ_TIMEOUT": "0.5"})
    try:
        fault = {"kind": "stall", "seconds": 5, "after_tokens": 0, "count": 3}
        call("POST", own_simulator.url + "/_sim/faults", json.dumps(fault).encode())
        api = openai.OpenAI(base_url=impatient.url + "/v1", api_key=tenant.key, max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            api.chat.completions.create(model=LONELY_MODEL, messages=CHAT)
    finally:
        impatient.stop()
    assert caught.value.status_code == 504
    [record] = usage_for(caught.value.response.headers["x-request-id"])
    assert (record.outcome, record.status_code, record.completion_tokens) == (
        "backend_error",
        504,
        0,
    )
