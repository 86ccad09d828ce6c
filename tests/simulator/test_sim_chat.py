from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pytest

from simulator import SimServer
from simulator.config import DEFAULT_MODEL as MODEL
from simulator.testing import http, parse_sse

HELLO = [{"role": "user", "content": "Hello, simulator!"}]


def _post_stream(sim: SimServer, payload: dict[str, Any]) -> tuple[str, list[Any]]:
    result = http("POST", f"{sim.base_url}/chat/completions", orjson.dumps(payload))
    assert result.status == 200
    return result.headers["Content-Type"], parse_sse(result.body)


def test_it_answers_a_chat_completion_the_sdk_parses(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12)

    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == MODEL
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + 12
    assert response.usage.prompt_tokens_details is not None
    assert response.usage.prompt_tokens_details.cached_tokens == 0
    assert response.usage.completion_tokens_details is not None
    assert response.usage.completion_tokens_details.reasoning_tokens == 0


def test_it_counts_message_tokens_plus_template_overhead(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},  # 3 tokens
        {"role": "user", "content": [{"type": "text", "text": "Hi there, friend"}]},  # 4 tokens
    ]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)

    assert response.usage is not None
    # Three template tokens per message and three to prime the reply.
    assert response.usage.prompt_tokens == 3 + 4 + 3 * 2 + 3


def test_it_stops_on_its_own_without_max_tokens(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=HELLO)

    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert 16 <= response.usage.completion_tokens <= 256


def test_a_generous_max_tokens_ends_where_the_model_stops_not_at_the_cap(
    client: openai.OpenAI,
) -> None:
    """As a model stops at its end-of-sequence token: a cap of 32,768 is not a length."""
    natural = client.chat.completions.create(model=MODEL, messages=HELLO)
    capped = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=32_768)
    cut = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10)

    assert natural.usage is not None and capped.usage is not None and cut.usage is not None
    assert capped.choices[0].finish_reason == "stop"
    assert capped.usage.completion_tokens == natural.usage.completion_tokens
    assert capped.choices[0].message.content == natural.choices[0].message.content
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 10


def test_ignore_eos_generates_exactly_max_tokens(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=300, extra_body={"ignore_eos": True}
    )

    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 300


def test_max_completion_tokens_takes_precedence(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_completion_tokens=3, max_tokens=50
    )

    assert response.usage is not None
    assert response.usage.completion_tokens == 3


def test_it_streams_one_token_per_chunk_with_usage_last(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    content_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert len(content_chunks) == 8
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.usage is None for chunk in content_chunks)
    assert [c.choices[0].finish_reason for c in content_chunks] == [None] * 7 + ["length"]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 8


def test_streamed_text_equals_the_non_streamed_text(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20)
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, stream=True)

    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert streamed == whole.choices[0].message.content


def test_raw_stream_has_null_usage_then_usage_chunk_then_done(sim: SimServer) -> None:
    content_type, events = _post_stream(
        sim,
        {
            "model": MODEL,
            "messages": HELLO,
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )

    assert content_type.startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    *token_events, usage_event, _ = events
    assert len(token_events) == 4
    assert all("usage" in event and event["usage"] is None for event in token_events)
    assert usage_event["choices"] == []
    assert usage_event["usage"]["completion_tokens"] == 4


def test_stream_without_include_usage_has_no_usage_field(sim: SimServer) -> None:
    _, events = _post_stream(
        sim, {"model": MODEL, "messages": HELLO, "max_tokens": 3, "stream": True}
    )

    assert events[-1] == "[DONE]"
    assert all("usage" not in event for event in events[:-1])
    assert len(events) == 4


@pytest.mark.asyncio
async def test_async_client_streams(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert len(chunks) == 6
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


@pytest.mark.asyncio
async def test_async_client_answers(async_client: openai.AsyncOpenAI) -> None:
    response = await async_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)

    assert response.usage is not None
    assert response.usage.completion_tokens == 2


@pytest.mark.asyncio
async def test_it_echoes_the_requested_model(sim: SimServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sim.base_url}/chat/completions",
            json={"model": "other-model", "messages": HELLO, "max_tokens": 1},
        ) as response,
    ):
        payload = await response.json()

    assert payload["model"] == "other-model"
