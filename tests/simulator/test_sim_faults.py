from __future__ import annotations

import itertools
import time
import urllib.error
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from simulator import SimServer
from simulator.config import DEFAULT_MODEL as MODEL
from simulator.testing import http
from tests.support.waiting import wait_until

HELLO = [{"role": "user", "content": "Hello"}]
STREAM_BODY = orjson.dumps({"model": MODEL, "messages": HELLO, "stream": True})


def _chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, **extra)


def _wait_for(sim: SimServer, key: str, value: int) -> dict[str, Any]:

    def reached() -> dict[str, Any] | None:
        stats = sim.stats()
        return stats if stats[key] == value else None

    return wait_until(
        reached,
        timeout=5,
        interval=0.02,
        what=f"{key} to be {value}",
        explain=lambda: f"it stayed {sim.stats()[key]}",
    )


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, openai.InternalServerError),
        (500, openai.InternalServerError),
        (429, openai.RateLimitError),
    ],
)
def test_a_status_fault_fails_exactly_the_next_n_requests(
    sim: SimServer, client: openai.OpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    sim.arm_fault(kind="status", status=status, count=2)

    for _ in range(2):
        with pytest.raises(error) as caught:
            _chat(client)
        assert caught.value.status_code == status
        assert isinstance(caught.value.body, dict)
        assert set(caught.value.body) >= {"message", "type", "param", "code"}
    assert _chat(client).usage.completion_tokens == 6
    assert sim.stats()["faults"] == {"status": 2}


def test_a_429_fault_says_when_to_retry(sim: SimServer, client: openai.OpenAI) -> None:
    sim.arm_fault(kind="status", status=429)

    with pytest.raises(openai.RateLimitError) as caught:
        _chat(client)

    assert caught.value.response.headers["retry-after"] == "1"


def test_faults_spare_the_model_list_and_health(sim: SimServer, client: openai.OpenAI) -> None:
    sim.arm_fault(kind="status", status=503)

    assert client.models.list().data
    assert http("GET", sim.url + "/health").status == 200
    with pytest.raises(openai.InternalServerError):
        _chat(client)


def test_armed_faults_are_served_oldest_first(sim: SimServer, client: openai.OpenAI) -> None:
    sim.arm_fault(kind="status", status=500)
    sim.arm_fault(kind="status", status=429)

    with pytest.raises(openai.InternalServerError):
        _chat(client)
    with pytest.raises(openai.RateLimitError):
        _chat(client)


def test_clearing_faults_disarms_them(sim: SimServer, client: openai.OpenAI) -> None:
    sim.arm_fault(kind="status", status=503, count=5)
    sim.reset()

    assert _chat(client).choices


def test_a_stall_pauses_a_stream_after_k_tokens(sim: SimServer, client: openai.OpenAI) -> None:
    sim.arm_fault(kind="stall", seconds=0.4, after_tokens=3)

    arrivals = []
    started = time.perf_counter()
    for chunk in _chat(client, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)

    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert len(arrivals) == 6
    assert gaps[2] >= 0.35
    assert max(gaps[:2] + gaps[3:]) < 0.35


def test_a_stall_delays_a_whole_response(sim: SimServer, client: openai.OpenAI) -> None:
    sim.arm_fault(kind="stall", seconds=0.4, after_tokens=2)

    started = time.perf_counter()
    response = _chat(client)

    assert time.perf_counter() - started >= 0.35
    assert response.usage.completion_tokens == 6


def test_a_stall_at_zero_tokens_delays_even_the_headers(sim: SimServer) -> None:
    sim.arm_fault(kind="stall", seconds=0.4, after_tokens=0)

    started = time.perf_counter()
    result = http("POST", sim.base_url + "/chat/completions", STREAM_BODY)

    assert time.perf_counter() - started >= 0.35
    assert result.body.endswith(b"data: [DONE]\n\n")


@pytest.mark.asyncio
async def test_a_disconnect_cuts_a_stream_after_k_chunks(sim: SimServer) -> None:
    sim.arm_fault(kind="disconnect", after_tokens=3)
    body = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 50,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    events: list[bytes] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.base_url}/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in response.content:
                if line.startswith(b"data: "):
                    events.append(line)

    assert len(events) == 3
    assert all(b'"choices":[{' in event for event in events)
    stats = _wait_for(sim, "aborted", 1)
    assert stats["faults"] == {"disconnect": 1}
    assert stats["generation_tokens"] >= 3


def test_a_disconnect_drops_a_non_streamed_request_without_a_response(
    sim: SimServer, client: openai.OpenAI
) -> None:
    sim.arm_fault(kind="disconnect", after_tokens=2)

    with pytest.raises(openai.APIConnectionError):
        _chat(client)
    _wait_for(sim, "aborted", 1)


def test_a_disconnect_at_zero_tokens_sends_no_headers(sim: SimServer) -> None:
    sim.arm_fault(kind="disconnect", after_tokens=0)

    with pytest.raises((urllib.error.URLError, ConnectionError)):
        http("POST", sim.base_url + "/chat/completions", STREAM_BODY)


def test_faults_reach_embeddings_too(sim: SimServer, client: openai.OpenAI) -> None:
    sim.arm_fault(kind="status", status=503)

    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model=MODEL, input="x")


@pytest.mark.parametrize(
    "spec",
    [
        b'{"kind": "meteor"}',
        b'{"kind": "status", "status": 200}',
        b'{"kind": "status", "count": 0}',
        b'{"kind": "stall", "after_tokens": 1}',
        b'{"kind": "disconnect", "after_tokens": -1}',
        b"[]",
        b"{",
    ],
)
def test_a_bad_fault_spec_is_rejected(instant: SimServer, spec: bytes) -> None:
    result = http("POST", instant.url + "/_sim/faults", spec)

    assert result.status == 400
    assert result.json()["error"]["message"]
