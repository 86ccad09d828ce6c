"""Deterministic tokenizer, prompt fingerprints and generated text.

Nothing here depends on timing or concurrency: the same seed and prompt always give the same
token counts and the same output, so tests and benchmarks can compare runs byte for byte.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import orjson

BLOCK_SIZE = 16
MIN_OUTPUT_TOKENS = 16
MAX_OUTPUT_TOKENS = 256

# A chat template adds three tokens around each message and three to prime the reply.
_START = "<|start|>"
_SEP = "<|sep|>"

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

_WORDS = (  # noqa: SIM905 -- a long word list reads better as prose
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "more can about some what them into only its time new other could then than two these may "
    "first any like now my such over our even most made after also did many before must through "
    "back years where much your way well down should because each just those people how too "
    "little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old year off come since "
    "against go came right used take three token factory energy watt batch model cache queue "
    "prefill decode latency throughput tier premium free interactive gateway backend request "
    "stream usage invoice margin price cost power cluster node memory tensor kernel"
).split()

_STREAM_LENGTH = 4096

_T = TypeVar("_T")


def tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


@dataclass(frozen=True, slots=True)
class Prompt:
    """A tokenized prompt: its length, a stable fingerprint and its prefix-cache block hashes."""

    num_tokens: int
    # Stable across processes (unlike hash()), so output text is reproducible for a seed.
    key: int
    # Chained hashes of each full 16-token block; in-process only, used for prefix caching.
    block_hashes: tuple[int, ...]


def _fingerprint(seed: int, data: bytes) -> int:
    digest = hashlib.blake2b(data, digest_size=8, person=b"tfsim-prompt")
    digest.update(str(seed).encode())
    return int.from_bytes(digest.digest(), "little")


def _block_hashes(tokens: Sequence[str]) -> tuple[int, ...]:
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(tokens) - BLOCK_SIZE + 1, BLOCK_SIZE):
        # Chaining makes a block's hash depend on everything before it, as in vLLM.
        parent = hash((parent, tuple(tokens[start : start + BLOCK_SIZE])))
        hashes.append(parent)
    return tuple(hashes)


def _prompt(seed: int, tokens: Sequence[str]) -> Prompt:
    data = "\x1f".join(tokens).encode()
    return Prompt(len(tokens), _fingerprint(seed, data), _block_hashes(tokens))


def text_prompt(seed: int, text: str) -> Prompt:
    return _prompt(seed, tokenize(text))


def token_id_prompt(seed: int, token_ids: Iterable[int]) -> Prompt:
    return _prompt(seed, [str(token_id) for token_id in token_ids])


def chat_prompt(seed: int, messages: Sequence[tuple[str, str]]) -> Prompt:
    """Prompt for (role, text) pairs, rendered through a minimal chat template."""
    tokens: list[str] = []
    for role, text in messages:
        tokens.extend((_START, role, _SEP))
        tokens.extend(tokenize(text))
    tokens.extend((_START, "assistant", _SEP))
    return _prompt(seed, tokens)


class TextGen:
    """The output side: which tokens a prompt produces, and how many when unconstrained."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        tokens: list[str] = []
        for _ in range(_STREAM_LENGTH):
            roll = rng.random()
            if roll < 0.07:
                tokens.append(".")
            elif roll < 0.12:
                tokens.append(",")
            else:
                tokens.append(" " + rng.choice(_WORDS))
        self._tokens = tokens
        # Pre-encoded JSON strings let the streaming path splice bytes instead of serialising.
        self._json = [orjson.dumps(token) for token in tokens]

    def natural_length(self, prompt: Prompt) -> int:
        span = MAX_OUTPUT_TOKENS - MIN_OUTPUT_TOKENS + 1
        return MIN_OUTPUT_TOKENS + (prompt.key >> 32) % span

    def _offset(self, prompt: Prompt) -> int:
        return prompt.key % _STREAM_LENGTH

    def tokens_json(self, prompt: Prompt, start: int, end: int) -> list[bytes]:
        return _window(self._json, self._offset(prompt) + start, end - start)

    def text(self, prompt: Prompt, start: int, end: int) -> str:
        return "".join(_window(self._tokens, self._offset(prompt) + start, end - start))


def _window(items: list[_T], start: int, count: int) -> list[_T]:
    """count items of the endless repetition of items, from position start."""
    start %= len(items)
    if start + count <= len(items):
        return items[start : start + count]
    repeats = (start + count) // len(items) + 1
    return (items * repeats)[start : start + count]
