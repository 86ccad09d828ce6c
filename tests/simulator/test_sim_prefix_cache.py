from __future__ import annotations

import uuid

import openai

from simulator.config import DEFAULT_MODEL as MODEL


def _cached(client: openai.OpenAI, content: str) -> tuple[int, int]:
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=1
    )
    assert response.usage is not None
    assert response.usage.prompt_tokens_details is not None
    return response.usage.prompt_tokens, response.usage.prompt_tokens_details.cached_tokens or 0


def test_a_repeated_prompt_reports_its_cached_prefix(client: openai.OpenAI) -> None:
    prompt = f"{uuid.uuid4().hex} " + "tokens are the product " * 50

    prompt_tokens, first = _cached(client, prompt)
    _, second = _cached(client, prompt)

    assert first == 0
    # Whole 16-token blocks, and never the full prompt: the last token is always computed.
    assert second % 16 == 0
    assert prompt_tokens - 16 < second < prompt_tokens


def test_a_shared_prefix_is_cached_up_to_where_prompts_differ(client: openai.OpenAI) -> None:
    shared = f"{uuid.uuid4().hex} " + "a long shared system prompt " * 20  # ~101 tokens
    _cached(client, shared + " first question")

    _, cached = _cached(client, shared + " second question")

    assert 80 <= cached <= 101


def test_a_different_prompt_gets_no_cache_hit(client: openai.OpenAI) -> None:
    _cached(client, f"{uuid.uuid4().hex} " + "some words " * 40)

    _, cached = _cached(client, f"{uuid.uuid4().hex} " + "some words " * 40)

    assert cached == 0
