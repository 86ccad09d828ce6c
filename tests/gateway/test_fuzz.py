"""Whatever a client sends, the gateway answers in the OpenAI error shape or serves it, never a
5xx of its own: random JSON, in every field the gateway reads and in fields it forwards, on
every inference route (schemathesis covers the management API: tests/console)."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.http import call
from tests.support.servers import Server
from tests.support.tenants import MODEL, Tenant, tenant_create

pytestmark = pytest.mark.usefixtures("gateway")

ROUTES = {
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": MODEL, "prompt": "hi"},
    "/v1/embeddings": {"model": MODEL, "input": "hi"},
}
FIELDS = (
    "model",
    "messages",
    "prompt",
    "input",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "stop",
    "service_tier",
    "reasoning_effort",
    "logprobs",
    "logit_bias",
    "tools",
    "ignore_eos",
    "priority",
    "encoding_format",
    "dimensions",
    "extra",
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def fuzzer(live_db: None) -> Tenant:
    return tenant_create("premium")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    route=st.sampled_from(sorted(ROUTES)),
    changes=st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=3),
)
def test_no_body_gets_a_5xx_or_an_error_in_another_shape(
    gateway: Server, fuzzer: Tenant, route: str, changes: dict[str, object]
) -> None:
    body = {**ROUTES[route], **changes}
    if isinstance(body.get("max_tokens"), int) and not isinstance(body["max_tokens"], bool):
        body["max_tokens"] = min(body["max_tokens"], 8)  # keep what is served short
    reply = call("POST", gateway.url + route, json.dumps(body).encode(), fuzzer.key)

    assert reply.status < 500, (reply.status, reply.body[:300])
    if reply.status >= 400:
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    time.sleep(0.01)  # kept a sleep: paces the examples, as a load generator would
