"""Parse and check an inference request body before anything reaches a backend.

Everything a client can get wrong is a 400 here, in the OpenAI error format, so that backends
only ever see well-formed requests and the SDK never retries a client mistake.
"""

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import ApiError, invalid_request

CHAT = "chat.completions"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
# The same paths on the gateway and on OpenAI-compatible backends.
ENDPOINT_PATHS = {
    CHAT: "/v1/chat/completions",
    COMPLETIONS: "/v1/completions",
    EMBEDDINGS: "/v1/embeddings",
}

# Larger than any context window shipped today; above it a value is a mistake, not a wish.
MAX_TOKENS_CEILING = 1_048_576
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


@dataclass(slots=True)
class InferenceRequest:
    endpoint: str
    model: str
    body: dict[str, Any]
    stream: bool
    # Whether the client asked for the usage chunk; the gateway always asks the backend for it.
    include_usage: bool
    max_tokens: int | None
    # About four bytes a token; only used when a backend does not report usage.
    prompt_tokens_estimate: int
    # The priority class asked for with OpenAI's `service_tier` (None: the key's own).
    requested_class: int | None = None
    # The class it is served in: set at admission, never above what the key's tier allows.
    served_class: int = 0


def request_parse(endpoint: str, raw: bytes) -> InferenceRequest:
    body = _json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("You must provide a model parameter.", param="model")
    if endpoint == CHAT:
        _check_messages(body.get("messages"))
    elif endpoint == COMPLETIONS:
        _check_inputs(body.get("prompt"), "prompt")
    else:
        _check_inputs(body.get("input"), "input")
    _check_sampling(body)
    stream = _flag(body, "stream")
    if endpoint == EMBEDDINGS and stream:
        raise invalid_request("Embeddings cannot be streamed.", param="stream")
    requested_class = _service_tier(body)
    return InferenceRequest(
        requested_class=requested_class,
        endpoint=endpoint,
        model=model,
        body=body,
        stream=stream,
        include_usage=_include_usage(body, stream),
        max_tokens=_max_tokens(body),
        prompt_tokens_estimate=max(1, len(raw) // 4),
    )


# OpenAI's service tiers and the priority classes they name (lower runs first).
SERVICE_TIERS = {"priority": 0, "scale": 0, "default": 1, "flex": 2, "auto": None}
CLASS_NAMES = ("priority", "default", "flex")


def _service_tier(body: dict[str, Any]) -> int | None:
    if "service_tier" not in body:
        return None
    tier = body.pop("service_tier")  # decided here; backends need not understand it
    if tier is None:
        return None
    if tier not in SERVICE_TIERS:
        raise invalid_request(
            f"`service_tier` must be one of {', '.join(SERVICE_TIERS)}.", param="service_tier"
        )
    return SERVICE_TIERS[tier]


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_request(
            "We could not parse the JSON body of your request. The body must be valid JSON."
        ) from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    return body


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise invalid_request("`messages` must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        param = f"messages.[{index}]"
        if not isinstance(message, dict):
            raise invalid_request(f"{param} must be an object.", param=param)
        if message.get("role") not in _ROLES:
            raise invalid_request(
                f"{param}.role must be one of {', '.join(sorted(_ROLES))}.", param=f"{param}.role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise invalid_request(
                f"{param}.content must be a string or an array.", param=f"{param}.content"
            )


def _check_inputs(value: object, param: str) -> None:
    """A string, or a non-empty array of strings, token ids or token-id arrays."""
    if isinstance(value, str):
        return
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return
        if all(_is_token_ids(item) for item in value) or _is_token_ids(value):
            return
    raise invalid_request(
        f"`{param}` must be a string or a non-empty array of strings or token ids.", param=param
    )


def _is_token_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(token, int) and not isinstance(token, bool) for token in value)
    )


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid_request(f"`{name}` must be a boolean.", param=name)
    return value


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise invalid_request(
            "`stream_options` is only allowed when `stream` is true.", param="stream_options"
        )
    if not isinstance(options, dict):
        raise invalid_request("`stream_options` must be an object.", param="stream_options")
    return _flag(options, "include_usage")


def _check_sampling(body: dict[str, Any]) -> None:
    for name, (low, high) in _RANGES.items():
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise invalid_request(f"`{name}` must be a number from {low} to {high}.", param=name)
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128):
        raise invalid_request("`n` must be an integer from 1 to 128.", param="n")


def _max_tokens(body: dict[str, Any]) -> int | None:
    found: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_request(f"`{name}` must be an integer.", param=name)
        if not 1 <= value <= MAX_TOKENS_CEILING:
            raise _out_of_range(name, value)
        found = value if found is None else found
    return found


def _out_of_range(name: str, value: int) -> ApiError:
    return invalid_request(
        f"`{name}` is {value}; it must be between 1 and {MAX_TOKENS_CEILING}.",
        param=name,
        code="invalid_value",
    )
