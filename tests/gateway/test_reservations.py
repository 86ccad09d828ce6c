"""What a request reserves against quotas and spend caps is an upper bound of what it can use,
whatever the client puts in it (pure logic, no servers)."""

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.admission import tokens_to_reserve
from gateway.validation import CHAT, COMPLETIONS, EMBEDDINGS, request_parse
from simulator.textgen import chat_prompt, count_tokens

# Text a hostile client might choose: punctuation (a token a byte), multi-byte characters,
# escapes that JSON writes longer or shorter than the text.
texts = st.text(
    alphabet=st.sampled_from(["!", "a", " ", "é", "字", "😀", "\n", '"', "\\", "\u0000", "1"]),
    max_size=400,
)
messages = st.lists(
    st.tuples(st.sampled_from(["system", "user", "assistant"]), texts), min_size=1, max_size=8
)


@given(messages=messages, n=st.integers(1, 128), max_tokens=st.integers(1, 4096))
def test_a_chat_reserves_at_least_every_token_it_can_use(
    messages: list[tuple[str, str]], n: int, max_tokens: int
) -> None:
    body = {
        "model": "m",
        "messages": [{"role": role, "content": text} for role, text in messages],
        "n": n,
        "max_tokens": max_tokens,
    }
    request = request_parse(CHAT, orjson.dumps(body))
    # The simulator's tokenizer makes a token of every punctuation mark; no real one makes
    # more tokens than bytes. Either way the prompt stays within the bound.
    prompt_tokens = chat_prompt(0, messages).num_tokens
    utf8_bytes = sum(len(text.encode()) for _, text in messages)

    assert request.prompt_tokens_bound >= prompt_tokens
    assert request.prompt_tokens_bound >= utf8_bytes
    assert tokens_to_reserve(request, max_tokens) >= prompt_tokens + n * max_tokens


@given(inputs=st.lists(texts, min_size=1, max_size=16))
def test_embeddings_reserve_at_least_their_inputs_tokens(inputs: list[str]) -> None:
    request = request_parse(EMBEDDINGS, orjson.dumps({"model": "m", "input": inputs}))
    assert tokens_to_reserve(request, None) >= sum(count_tokens(text) for text in inputs)


def test_n_choices_reserve_n_completions() -> None:
    """One `n=128, max_tokens=100` request counted 12,810 tokens against a 3,000 quota."""
    raw = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 128, "max_tokens": 100}
    )
    assert tokens_to_reserve(request_parse(CHAT, raw), 100) >= 12_800


@given(prompts=st.lists(texts, min_size=1, max_size=16), n=st.integers(1, 8))
def test_completions_reserve_every_answer_of_every_prompt(prompts: list[str], n: int) -> None:
    """A list of prompts is as many answers as prompts, `n` each, each up to max_tokens."""
    body = {"model": "m", "prompt": prompts, "n": n, "max_tokens": 50}
    request = request_parse(COMPLETIONS, orjson.dumps(body))
    assert tokens_to_reserve(request, 50) >= len(prompts) * n * 50
