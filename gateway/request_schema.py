"""JSON Schemas of the inference request bodies: every field the gateway reads or a backend acts
on, with its type and range. Fields not named here are forwarded as they are (vLLM and other
engines take extra sampling options), within the depth and size limits of gateway/validation.py.

A field a backend would choke on must be named here: an engine's 500 for a client's mistake
would count against the backend (its circuit breaker) and reach no one as a useful 400.
"""

from typing import Any

# Larger than any context window shipped today; above it a value is a mistake, not a wish.
MAX_TOKENS_CEILING = 1_048_576
MAX_CHOICES = 128
# OpenAI's service tiers and the priority classes they name (lower runs first).
SERVICE_TIERS = {"priority": 0, "scale": 0, "default": 1, "flex": 2, "auto": None}
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")

Schema = dict[str, Any]


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [{"type": "null"}, schema]}


def _number(low: float, high: float) -> Schema:
    return _nullable({"type": "number", "minimum": low, "maximum": high})


def _integer(low: int, high: int) -> Schema:
    return _nullable({"type": "integer", "minimum": low, "maximum": high})


_NAME = {"type": "string", "maxLength": 256}
_BOOLEAN = _nullable({"type": "boolean"})
_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": list(ROLES)},
        "content": _nullable(
            {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["type"],
                            "properties": {"type": {"type": "string"}},
                        },
                    },
                ]
            }
        ),
        "name": _NAME,
        "tool_call_id": {"type": "string"},
        "tool_calls": _nullable({"type": "array", "items": {"type": "object"}}),
    },
}
_STOP = _nullable(
    {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "maxItems": 16, "items": {"type": "string"}},
        ]
    }
)
# What the gateway itself reads, on every endpoint: a value of the wrong type here would
# reach its own code, whatever the endpoint makes of the field.
_READ: Schema = {
    "model": {"type": "string", "minLength": 1, "maxLength": 256},
    "stream": _BOOLEAN,
    "stream_options": _nullable({"type": "object", "properties": {"include_usage": _BOOLEAN}}),
    "max_tokens": _integer(1, MAX_TOKENS_CEILING),
    "max_completion_tokens": _integer(1, MAX_TOKENS_CEILING),
    "n": _integer(1, MAX_CHOICES),
    "service_tier": _nullable({"enum": list(SERVICE_TIERS)}),
}
# And what the generating endpoints' engines act on.
_COMMON: Schema = {
    **_READ,
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0),
    "presence_penalty": _number(-2.0, 2.0),
    "frequency_penalty": _number(-2.0, 2.0),
    "seed": _nullable({"type": "integer"}),
    "stop": _STOP,
    "user": _nullable({"type": "string", "maxLength": 512}),
    "logit_bias": _nullable(
        {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        }
    ),
    # vLLM's own options the gateway or the simulator act on.
    "ignore_eos": _BOOLEAN,
    "min_tokens": _integer(0, MAX_TOKENS_CEILING),
    "top_k": _nullable({"type": "integer", "minimum": -1}),
}

CHAT: Schema = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        **_COMMON,
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "reasoning_effort": _nullable({"enum": list(REASONING_EFFORTS)}),
        "logprobs": _BOOLEAN,
        "top_logprobs": _integer(0, 20),
        "tools": _nullable({"type": "array", "items": {"type": "object"}}),
        "tool_choice": _nullable({"type": ["string", "object"]}),
        "parallel_tool_calls": _BOOLEAN,
        "response_format": _nullable({"type": "object"}),
    },
}

_PROMPT = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
        _TOKEN_IDS,
        {"type": "array", "minItems": 1, "items": _TOKEN_IDS},
    ]
}

COMPLETIONS: Schema = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        **_COMMON,
        "prompt": _PROMPT,
        "echo": _BOOLEAN,
        "best_of": _integer(1, 20),
        "logprobs": _integer(0, 5),
        "suffix": _nullable({"type": "string"}),
    },
}

EMBEDDINGS: Schema = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        **_READ,
        "input": _PROMPT,
        "encoding_format": _nullable({"enum": ["float", "base64"]}),
        "dimensions": _integer(1, 65_536),
        "user": _COMMON["user"],
        "stream": {"anyOf": [{"type": "null"}, {"const": False}]},
    },
}
