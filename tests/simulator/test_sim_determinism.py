from __future__ import annotations

import asyncio

import openai
import pytest

from simulator import SimServer
from simulator.config import DEFAULT_MODEL as MODEL


def _sdk(server: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def _ask(client: openai.OpenAI, prompt: str) -> str:
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}]
    )
    return response.choices[0].message.content or ""


def test_a_seed_and_prompt_always_give_the_same_answer(instant: SimServer) -> None:
    client = _sdk(instant)

    assert _ask(client, "What is a token?") == _ask(client, "What is a token?")
    assert _ask(client, "What is a token?") != _ask(client, "What is a watt?")


def test_another_seed_gives_another_answer(instant: SimServer, seed_one: SimServer) -> None:
    assert _ask(_sdk(instant), "What is a token?") != _ask(_sdk(seed_one), "What is a token?")


@pytest.mark.asyncio
async def test_answers_do_not_depend_on_concurrency_or_mode(
    instant: SimServer, fast: SimServer
) -> None:
    prompts = [f"Question number {i}" for i in range(24)]
    sequential = [_ask(_sdk(instant), prompt) for prompt in prompts]

    client = openai.AsyncOpenAI(base_url=fast.base_url, api_key="sk-test", max_retries=0)
    responses = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}]
            )
            for prompt in prompts
        )
    )

    assert [response.choices[0].message.content for response in responses] == sequential
