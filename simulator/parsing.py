"""Request bodies to validated jobs. Every client mistake becomes a 4xx ApiError, never a 5xx."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from simulator.errors import ApiError
from simulator.state import Simulator
from simulator.textgen import Prompt, chat_prompt, text_prompt, token_id_prompt

REASONING_FRACTIONS = {"none": 0.0, "minimal": 0.1, "low": 0.25, "medium": 0.5, "high": 0.75}


@dataclass(frozen=True, slots=True)
class Job:
    """A validated generation request: one prompt per choice."""

    model: str
    prompts: list[Prompt]
    # None lets each prompt pick its own natural length and finish with "stop".
    max_tokens: int | None
    # vLLM's `ignore_eos`: generate exactly max_tokens (or up to the context), never stop early.
    ignore_eos: bool
    stream: bool
    include_usage: bool
    priority: int
    reasoning_fraction: float


@dataclass(frozen=True, slots=True)
class EmbeddingJob:
    model: str
    inputs: list[Prompt]
    base64: bool
    dimensions: int


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "Request body is too large.") from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    return body


def _is_int(value: object) -> bool:
    # bool is an int to Python but never a valid count in JSON.
    return isinstance(value, int) and not isinstance(value, bool)


def _model(sim: Simulator, body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(
            400,
            "you must provide a model parameter",
            param="model",
            code="missing_required_parameter",
        )
    if model not in sim.engines:
        raise ApiError(
            404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
        )
    return model


def _max_tokens(body: dict[str, Any], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise ApiError(400, f"'{name}' must be a positive integer.", param=name)
        return int(value)
    return None


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be a boolean.", param=name)
    return value


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object.", param="stream_options")
    return _flag(options, "include_usage")


def _priority(body: dict[str, Any]) -> int:
    value = body.get("priority", 0)
    if value is None:
        return 0
    if not _is_int(value):
        raise ApiError(400, "'priority' must be an integer.", param="priority")
    return int(value)


def _check_n(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "Only n=1 is supported by the simulator.", param="n")


def _check_context(sim: Simulator, prompts: list[Prompt], max_tokens: int | None) -> None:
    limit = sim.config.max_model_len
    for prompt in prompts:
        wanted = prompt.num_tokens + (max_tokens or 0)
        if wanted > limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{wanted} tokens ({prompt.num_tokens} in the messages, {max_tokens or 0} in the "
                "completion). Please reduce the length of the messages or completion.",
                param="messages",
            )


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise ApiError(400, "Message content parts must be objects.", param="messages")
            text = part.get("text")
            if part.get("type") == "text" and isinstance(text, str):
                parts.append(text)
        return "\n".join(parts)
    raise ApiError(400, "Message content must be a string or a list of parts.", param="messages")


def _messages(body: dict[str, Any]) -> list[tuple[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages")
    rendered = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, "Each message needs a string 'role'.", param="messages")
        rendered.append((message["role"], _message_text(message)))
    return rendered


def _reasoning_fraction(body: dict[str, Any]) -> float:
    effort = body.get("reasoning_effort")
    if effort is None:
        return 0.0
    if effort not in REASONING_FRACTIONS:
        raise ApiError(
            400,
            f"'reasoning_effort' must be one of {', '.join(REASONING_FRACTIONS)}.",
            param="reasoning_effort",
        )
    return REASONING_FRACTIONS[effort]


def parse_chat(sim: Simulator, body: dict[str, Any]) -> Job:
    model = _model(sim, body)
    _check_n(body)
    prompts = [chat_prompt(sim.config.seed, _messages(body))]
    max_tokens = _max_tokens(body, ("max_completion_tokens", "max_tokens"))
    _check_context(sim, prompts, max_tokens)
    return Job(
        model=model,
        prompts=prompts,
        max_tokens=max_tokens,
        ignore_eos=_flag(body, "ignore_eos"),
        stream=_flag(body, "stream"),
        include_usage=_include_usage(body),
        priority=_priority(body),
        reasoning_fraction=_reasoning_fraction(body),
    )


def _prompts(seed: int, value: object, param: str) -> list[Prompt]:
    """A string, a list of strings, a token-id list, or a list of token-id lists."""
    if isinstance(value, str):
        return [text_prompt(seed, value)]
    if isinstance(value, list) and value:
        if all(_is_int(item) for item in value):
            return [token_id_prompt(seed, value)]
        if all(isinstance(item, str) for item in value):
            return [text_prompt(seed, item) for item in value]
        if all(isinstance(item, list) and all(_is_int(i) for i in item) for item in value):
            return [token_id_prompt(seed, item) for item in value]
    raise ApiError(
        400,
        f"'{param}' must be a string, a list of strings, or token ids.",
        param=param,
    )


def parse_completion(sim: Simulator, body: dict[str, Any]) -> Job:
    model = _model(sim, body)
    _check_n(body)
    prompts = _prompts(sim.config.seed, body.get("prompt"), "prompt")
    max_tokens = _max_tokens(body, ("max_tokens",))
    _check_context(sim, prompts, max_tokens)
    return Job(
        model=model,
        prompts=prompts,
        max_tokens=max_tokens,
        ignore_eos=_flag(body, "ignore_eos"),
        stream=_flag(body, "stream"),
        include_usage=_include_usage(body),
        priority=_priority(body),
        reasoning_fraction=0.0,
    )


def parse_embedding(sim: Simulator, body: dict[str, Any]) -> EmbeddingJob:
    model = _model(sim, body)
    inputs = _prompts(sim.config.seed, body.get("input"), "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(
            400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = sim.config.embedding_dim
    elif not _is_int(dimensions) or not 1 <= dimensions <= sim.config.embedding_dim:
        raise ApiError(
            400,
            f"'dimensions' must be an integer in [1, {sim.config.embedding_dim}].",
            param="dimensions",
        )
    return EmbeddingJob(
        model=model, inputs=inputs, base64=encoding == "base64", dimensions=int(dimensions)
    )
