from __future__ import annotations

import openai
import pytest

from simulator.config import DEFAULT_MODEL as MODEL

HARD = [{"role": "user", "content": "Prove it."}]


@pytest.mark.parametrize(("effort", "reasoning"), [("low", 10), ("medium", 20), ("high", 30)])
def test_reasoning_effort_sets_the_reasoning_share(
    client: openai.OpenAI, effort: str, reasoning: int
) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=HARD, max_tokens=40, reasoning_effort=effort
    )

    assert response.usage is not None
    assert response.usage.completion_tokens == 40
    assert response.usage.completion_tokens_details is not None
    assert response.usage.completion_tokens_details.reasoning_tokens == reasoning
    message = response.choices[0].message
    assert message.reasoning_content  # type: ignore[attr-defined]
    assert message.content


def test_reasoning_streams_first_in_reasoning_content(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HARD,
        max_tokens=12,
        reasoning_effort="medium",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    kinds = [
        "reasoning" if getattr(c.choices[0].delta, "reasoning_content", None) else "content"
        for c in chunks[:-1]
    ]
    assert kinds == ["reasoning"] * 6 + ["content"] * 6
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 6


def test_without_reasoning_effort_there_is_no_reasoning(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=HARD, max_tokens=10)

    assert response.usage is not None
    assert response.usage.completion_tokens_details is not None
    assert response.usage.completion_tokens_details.reasoning_tokens == 0
    assert response.choices[0].message.reasoning_content is None  # type: ignore[attr-defined]
