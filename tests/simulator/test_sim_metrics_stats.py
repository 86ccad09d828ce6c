from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator import SimServer
from simulator.config import DEFAULT_MODEL as MODEL
from simulator.testing import http
from tests.support.waiting import wait_until_async

HELLO = [{"role": "user", "content": "Hello"}]


def _samples(sim: SimServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = http("GET", sim.url + "/metrics")
    assert result.headers["Content-Type"].startswith("text/plain")
    text = result.body.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({"model_name": MODEL, **labels}.items()))


def test_metrics_parse_and_count_tokens_and_outcomes(sim: SimServer, client: openai.OpenAI) -> None:
    before = _samples(sim)

    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
    after = _samples(sim)

    def grew(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after[key] - before.get(key, 0.0)

    assert grew(_key("vllm:generation_tokens_total")) == 5
    assert grew(_key("vllm:prompt_tokens_total")) == 7
    assert grew(_key("vllm:request_success_total", finished_reason="length")) == 1
    assert after[_key("vllm:num_requests_running")] == 0
    assert after[_key("vllm:num_requests_waiting")] == 0
    assert _key("vllm:num_requests_running", model_name="other-model") in after
    # Every step's tokens (the 7 of the prompt, then 4 decoded after the first) and how many
    # steps: one with instant answers, one a token with the engine loop.
    assert grew(_key("vllm:iteration_tokens_total_sum")) == 11
    assert grew(_key("vllm:iteration_tokens_total_count")) == (1 if sim.config.instant else 5)
    assert grew(_key("vllm:request_prefill_time_seconds_count")) == 1
    assert grew(_key("vllm:request_decode_time_seconds_count")) == 1
    # Timed by the engine's clock: the modelled pass over its 7 tokens, in the server's time.
    timing, speedup = sim.config.timing, sim.config.speedup
    seconds = timing.prefill_seconds(1, 7) / (speedup or 1)
    assert grew(_key("vllm:request_prefill_time_seconds_sum")) == pytest.approx(seconds)


def test_stats_tell_what_reached_the_backend(sim: SimServer, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=3)
    client.models.list()

    stats = sim.stats(recent=3)

    assert stats["requests"] == {
        "/v1/chat/completions": 1,
        "/v1/completions": 1,
        "/v1/models": 1,
    }
    assert (stats["completed"], stats["aborted"], stats["generation_tokens"]) == (2, 0, 7)
    chat, completion = stats["recent"]
    assert (chat["path"], chat["body"]["max_tokens"]) == ("/v1/chat/completions", 4)
    assert chat["headers"]["Authorization"] == "<redacted>"
    assert completion["body"]["prompt"] == "Hi"
    assert sim.stats()["recent"] == []


def _with(stats: dict[str, Any], key: str, value: int) -> dict[str, Any] | None:
    """The stats, if `key` is `value` in them."""
    return stats if stats[key] == value else None


@pytest.mark.asyncio
async def test_a_client_leaving_mid_stream_aborts_its_sequence(realtime: SimServer) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 500, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{realtime.base_url}/chat/completions", json=body) as response,
    ):
        seen = 0
        async for line in response.content:
            seen += line.startswith(b"data: ")
            if seen == 3:
                break
    # Leaving the block without reading on closes the connection under the stream.

    stats = await wait_until_async(
        lambda: _with(realtime.stats(), "aborted", 1),
        timeout=5,
        interval=0.02,
        what="the sequence to be aborted",
    )
    assert stats["engines"][MODEL] == {"running": 0, "waiting": 0}
    assert 3 <= stats["generation_tokens"] < 500
    samples = _samples(realtime)
    assert samples[_key("vllm:request_success_total", finished_reason="abort")] >= 1


@pytest.mark.asyncio
async def test_a_client_giving_up_on_a_non_streamed_request_aborts_it(
    realtime: SimServer,
) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 500}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(f"{realtime.base_url}/chat/completions", json=body)

    stats = await wait_until_async(
        lambda: _with(realtime.stats(), "aborted", 1),
        timeout=5,
        interval=0.02,
        what="the sequence to be aborted",
    )
    assert stats["engines"][MODEL] == {"running": 0, "waiting": 0}
