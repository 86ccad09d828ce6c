from __future__ import annotations

import openai
import pytest

from simulator.config import DEFAULT_MODEL as MODEL


def test_it_completes_a_prompt_string(client: openai.OpenAI) -> None:
    response = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7)

    assert response.id.startswith("cmpl-")
    assert response.object == "text_completion"
    assert response.choices[0].finish_reason == "length"
    assert response.choices[0].text
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (4, 7)


def test_it_answers_one_choice_per_prompt_in_a_list(client: openai.OpenAI) -> None:
    response = client.completions.create(model=MODEL, prompt=["one two", "three"], max_tokens=3)

    assert [choice.index for choice in response.choices] == [0, 1]
    assert response.usage is not None
    assert response.usage.prompt_tokens == 3
    assert response.usage.completion_tokens == 6


def test_it_accepts_token_id_prompts(client: openai.OpenAI) -> None:
    response = client.completions.create(model=MODEL, prompt=[1, 2, 3, 4, 5], max_tokens=2)

    assert response.usage is not None
    assert response.usage.prompt_tokens == 5


def test_it_streams_every_choice_then_usage(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL,
        prompt=["alpha", "beta"],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    *text_chunks, usage_chunk = chunks
    assert sorted(chunk.choices[0].index for chunk in text_chunks) == [0] * 4 + [1] * 4
    finished = [c.choices[0].index for c in text_chunks if c.choices[0].finish_reason == "length"]
    assert sorted(finished) == [0, 1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 8


@pytest.mark.asyncio
async def test_async_client_completes(async_client: openai.AsyncOpenAI) -> None:
    response = await async_client.completions.create(model=MODEL, prompt="Hi", max_tokens=3)

    assert response.usage is not None
    assert response.usage.completion_tokens == 3
