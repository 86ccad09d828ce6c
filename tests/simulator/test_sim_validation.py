"""Client mistakes get OpenAI-shaped 4xx errors, never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator import SimServer
from simulator.config import DEFAULT_MODEL as MODEL
from simulator.testing import http

HELLO = [{"role": "user", "content": "Hello"}]


def _post(sim: SimServer, path: str, body: bytes) -> tuple[int, Any]:
    result = http("POST", sim.base_url + path, body)
    return result.status, result.json() if result.status != 200 else result.body


@pytest.mark.parametrize("path", ["/chat/completions", "/completions", "/embeddings"])
@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b"", b'"text"'])
def test_it_rejects_bodies_that_are_not_json_objects(
    instant: SimServer, path: str, body: bytes
) -> None:
    status, payload = _post(instant, path, body)

    assert status == 400
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["type"] == "invalid_request_error"


def test_it_requires_a_model(instant: SimServer) -> None:
    status, payload = _post(instant, "/chat/completions", orjson.dumps({"messages": HELLO}))

    assert status == 400
    assert payload["error"]["param"] == "model"


def test_it_rejects_an_unknown_model_with_404(instant: SimServer) -> None:
    client = openai.OpenAI(base_url=instant.base_url, api_key="sk-test", max_retries=0)

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=HELLO)  # type: ignore[arg-type]

    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", "ten"),
        ("max_tokens", True),
        ("max_tokens", 10**9),
        ("max_completion_tokens", 1.5),
        ("messages", []),
        ("messages", "hello"),
        ("messages", [{"content": "no role"}]),
        ("messages", [{"role": "user", "content": 42}]),
        ("stream", "yes"),
        ("stream_options", "usage"),
        ("priority", "high"),
        ("n", 2),
        ("reasoning_effort", "extreme"),
    ],
)
def test_it_rejects_bad_chat_fields(instant: SimServer, field: str, value: object) -> None:
    body = {"model": MODEL, "messages": HELLO, field: value}

    status, payload = _post(instant, "/chat/completions", orjson.dumps(body))

    assert status == 400, payload
    assert payload["error"]["message"]


@pytest.mark.parametrize("prompt", [None, [], [["a"]], [1, "a"], {"text": "x"}])
def test_it_rejects_bad_prompts(instant: SimServer, prompt: object) -> None:
    status, _ = _post(instant, "/completions", orjson.dumps({"model": MODEL, "prompt": prompt}))

    assert status == 400


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
_fields = st.sampled_from(
    [
        "model",
        "messages",
        "prompt",
        "input",
        "max_tokens",
        "stream",
        "stream_options",
        "priority",
        "n",
        "reasoning_effort",
        "encoding_format",
        "dimensions",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/chat/completions", "/completions", "/embeddings"]),
    fields=st.dictionaries(_fields, _json, max_size=6),
    with_model=st.booleans(),
)
def test_no_request_body_causes_a_server_error(
    instant: SimServer, path: str, fields: dict[str, Any], with_model: bool
) -> None:
    if with_model:
        fields["model"] = MODEL

    # The stdlib encoder, unlike orjson, also sends integers beyond 64 bits.
    status, _ = _post(instant, path, json.dumps(fields).encode())

    assert status < 500
