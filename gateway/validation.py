"""Parse and check an inference request body before anything reaches a backend.

Everything a client can get wrong is a 400 here, in the OpenAI error format, so that backends
only ever see well-formed requests and the SDK never retries a client mistake.
"""

import re
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import orjson

from gateway import request_schema
from gateway.errors import invalid_request
from gateway.request_schema import MAX_TOKENS_CEILING, SERVICE_TIERS

CHAT = "chat.completions"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
# The same paths on the gateway and on OpenAI-compatible backends.
ENDPOINT_PATHS = {
    CHAT: "/v1/chat/completions",
    COMPLETIONS: "/v1/completions",
    EMBEDDINGS: "/v1/embeddings",
}

__all__ = ["MAX_TOKENS_CEILING", "InferenceRequest", "nested_deeper_than", "request_parse"]
_VALIDATORS = {
    CHAT: jsonschema_rs.validator_for(request_schema.CHAT),
    COMPLETIONS: jsonschema_rs.validator_for(request_schema.COMPLETIONS),
    EMBEDDINGS: jsonschema_rs.validator_for(request_schema.EMBEDDINGS),
}
# JSON nested deeper than this is refused: no request needs it, and a backend (or our own
# serializer, orjson stops at 255) would fail on it after admission.
MAX_DEPTH = 32
# A byte-level tokenizer never makes more tokens than the text has bytes, and the JSON around
# each message is longer than the few tokens its chat template adds; this covers a template's
# fixed preamble (a default system prompt).
TEMPLATE_TOKENS = 64
_SHOWN_CHARS = 200


@dataclass(slots=True)
class InferenceRequest:
    endpoint: str
    model: str
    body: dict[str, Any]
    stream: bool
    # Whether the client asked for the usage chunk; the gateway always asks the backend for it.
    include_usage: bool
    max_tokens: int | None
    # About four bytes a token: the likely count, for a backend that reports no usage and for
    # the plan's context limit.
    prompt_tokens_estimate: int
    # No tokenizer can make more prompt tokens than this: what quotas and spend caps reserve.
    prompt_tokens_bound: int = 0
    # Answers the request asks for, each of which may use up to max_tokens: `n` for each
    # prompt (a completions request may send a list of them).
    answers: int = 1
    # The priority class asked for with OpenAI's `service_tier` (None: the key's own).
    requested_class: int | None = None
    # The class it is served in: set at admission, never above what the key's tier allows.
    served_class: int = 0


def request_parse(endpoint: str, raw: bytes) -> InferenceRequest:
    """The request, or a 400 naming the first field that is wrong (never an exception else)."""
    body = _json_object(raw)
    _check_depth(body)
    _check_schema(endpoint, body)
    stream = bool(body.get("stream"))
    return InferenceRequest(
        requested_class=_service_tier(body),
        endpoint=endpoint,
        model=body["model"],
        body=body,
        stream=stream,
        include_usage=_include_usage(body, stream),
        max_tokens=None if endpoint == EMBEDDINGS else _max_tokens(body),
        prompt_tokens_estimate=max(1, len(raw) // 4),
        prompt_tokens_bound=len(raw) + TEMPLATE_TOKENS,
        answers=int(body.get("n") or 1) * _prompt_count(endpoint, body),
    )


CLASS_NAMES = ("priority", "default", "flex")


def _service_tier(body: dict[str, Any]) -> int | None:
    """The class OpenAI's `service_tier` names; decided here, so backends never see it, nor
    an engine `priority` of the client's own (the gateway sets it from the class served)."""
    body.pop("priority", None)
    tier = body.pop("service_tier", None)
    return None if tier is None else SERVICE_TIERS[tier]


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


def _check_depth(body: dict[str, Any]) -> None:
    if nested_deeper_than(body, MAX_DEPTH):
        raise invalid_request(f"The request body is nested deeper than {MAX_DEPTH} levels.")


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether JSON holds an array or object more than `limit` levels down (the outermost is
    level 1). Level by level, so that a hostile depth costs no recursion."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def _check_schema(endpoint: str, body: dict[str, Any]) -> None:
    """The first error, the model's before any other, so that a client fixes one at a time."""
    errors = list(_VALIDATORS[endpoint].iter_errors(body))
    if not errors:
        return
    error = min(errors, key=lambda error: _field(error) != "model")
    path = ".".join(f"[{part}]" if isinstance(part, int) else part for part in error.instance_path)
    param = path or _field(error) or None
    message = error.message
    if len(message) > _SHOWN_CHARS:
        message = message[:_SHOWN_CHARS] + "…"
    where = f"`{param}`" if param else "The request body"
    raise invalid_request(f"Invalid value for {where}: {message}", param=param)


def _field(error: jsonschema_rs.ValidationError) -> str:
    """The top-level field an error is about, a missing one included."""
    if error.instance_path:
        return str(error.instance_path[0])
    missing = re.match(r'^"(\w+)" is a required property', error.message)
    return missing.group(1) if missing else ""


def _prompt_count(endpoint: str, body: dict[str, Any]) -> int:
    """A list of token ids is one prompt; a list of strings or of id lists is several."""
    prompt = body.get("prompt")
    if endpoint == COMPLETIONS and isinstance(prompt, list) and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise invalid_request(
            "`stream_options` is only allowed when `stream` is true.", param="stream_options"
        )
    return bool(options.get("include_usage"))


def _max_tokens(body: dict[str, Any]) -> int | None:
    """OpenAI's newer name first; the schema has checked both."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            return int(value)
    return None
