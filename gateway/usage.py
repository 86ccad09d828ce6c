"""What a finished request used: the backend's usage report, checked, or the gateway's count.

A backend's usage report is input like any other. A bug, or a backend that cannot be trusted,
can send a string, a negative, or more tokens than the request made possible; billed as sent
it poisons the ledger, and parsed carelessly it raised in the settle step and left the request
unrecorded. So a report is checked against what the request allowed. One that fails is not
billed: the record carries what the gateway counted itself (its prompt estimate and the tokens
it streamed), is marked estimated, and keeps the report under `usage_anomaly` for review.
"""

import logging
import time
from dataclasses import dataclass
from typing import Any

from gateway.inflight import Progress
from gateway.proxy import Forwarded
from gateway.validation import EMBEDDINGS, MAX_TOKENS_CEILING, InferenceRequest

log = logging.getLogger(__name__)

# Prompt tokens a request may have beyond its body's bound (InferenceRequest.prompt_tokens_bound):
# images or audio fetched by URL count as tokens without being in the body.
PROMPT_ALLOWANCE = 32_768
# Outcomes in which the backend worked, so its answer is billed even without a usage report.
_SERVED = ("ok", "client_disconnected")


@dataclass(frozen=True, slots=True)
class UsageBounds:
    """The most a truthful usage report can claim for one request."""

    prompt: int
    completion: int  # 0 for embeddings, which generate nothing


@dataclass(frozen=True, slots=True)
class Counts:
    prompt: int
    cached: int
    completion: int
    reasoning: int


def usage_bounds(request: InferenceRequest) -> UsageBounds:
    """From the request as sent upstream: its body size, its completion cap and its answers."""
    # Where the client set no cap, the gateway put the plan's into the body (GatewayApp._route).
    cap = request.max_tokens if request.max_tokens is not None else request.body.get("max_tokens")
    per_answer = cap if isinstance(cap, int) else MAX_TOKENS_CEILING
    completion = 0 if request.endpoint == EMBEDDINGS else per_answer * request.answers
    return UsageBounds(prompt=request.prompt_tokens_bound + PROMPT_ALLOWANCE, completion=completion)


def usage_check(usage: object, bounds: UsageBounds) -> Counts | str:
    """The report's counts if they can be true for this request, else what is wrong with them."""
    try:
        return _counts(usage, bounds)
    except _Impossible as problem:
        return str(problem)


class _Impossible(Exception):
    """A usage report no backend could truthfully send for this request."""


def _counts(usage: object, bounds: UsageBounds) -> Counts:
    if not isinstance(usage, dict):
        raise _Impossible("the report is not a JSON object")
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    if not isinstance(prompt_details, dict) or not isinstance(completion_details, dict):
        raise _Impossible("its token details are not JSON objects")
    prompt = _count("prompt_tokens", usage.get("prompt_tokens"), bounds.prompt)
    # Embeddings report no completion tokens; every other endpoint must say how many.
    reported = usage.get("completion_tokens", None if bounds.completion else 0)
    completion = _count("completion_tokens", reported, bounds.completion)
    cached = _count("cached_tokens", _null_as_zero(prompt_details.get("cached_tokens")), prompt)
    reasoning = completion_details.get("reasoning_tokens")
    reasoning = _count("reasoning_tokens", _null_as_zero(reasoning), completion)
    return Counts(prompt, cached, completion, reasoning)


def _null_as_zero(value: object) -> object:
    return 0 if value is None else value


def _count(name: str, value: object, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Impossible(f"{name} is not a non-negative integer")
    if value > most:
        raise _Impossible(f"{name} is {value}; this request allows at most {most}")
    return value


def usage_record(
    entry: dict[str, Any],
    forwarded: Forwarded,
    progress: Progress,
    arrived: float,
    bounds: UsageBounds,
) -> dict[str, Any]:
    """The usage record of a finished request: the backend's counts, or the gateway's own."""
    usage = forwarded.usage
    checked = None if usage is None or usage == {} else usage_check(usage, bounds)
    if isinstance(checked, Counts):
        return _record(entry, forwarded, checked, arrived, estimated=False)
    delivered = progress.completion_tokens
    if checked is None and not delivered and forwarded.outcome not in _SERVED:
        # Nothing reached the client and the backend reported nothing: nothing to bill.
        return _record(entry, forwarded, Counts(0, 0, 0, 0), arrived, estimated=False)
    # The counts never arrived, or cannot be true: bill what we saw, marked as such.
    counted = Counts(entry["prompt_tokens"], 0, delivered, 0)
    record = _record(entry, forwarded, counted, arrived, estimated=True)
    if checked is not None:
        record["usage_anomaly"] = {"reported": usage, "problem": checked}
        log.warning(
            "refused a backend's usage report; recorded the gateway's own count",
            extra={"request_id": entry["request_id"], "backend": forwarded.backend.name},
        )
    return record


def usage_fallback(
    entry: dict[str, Any], forwarded: Forwarded, progress: Progress, arrived: float
) -> dict[str, Any]:
    """A record when building the real one failed (a bug): the gateway's own count, estimated,
    with no report to check."""
    counted = Counts(entry["prompt_tokens"], 0, progress.completion_tokens, 0)
    return _record(entry, forwarded, counted, arrived, estimated=True)


def _record(
    entry: dict[str, Any],
    forwarded: Forwarded,
    counts: Counts,
    arrived: float,
    *,
    estimated: bool,
) -> dict[str, Any]:
    now = time.monotonic()
    first = forwarded.first_token_at
    return {
        **entry,
        "backend": forwarded.backend.name,
        "prompt_tokens": counts.prompt,
        "cached_prompt_tokens": counts.cached,
        "completion_tokens": counts.completion,
        "reasoning_tokens": counts.reasoning,
        "tokens_estimated": estimated,
        "ttft_ms": None if first is None else (first - arrived) * 1000,
        "latency_ms": (now - arrived) * 1000,
        "status_code": forwarded.status_code,
        "outcome": forwarded.outcome,
        "ended_at": entry["started_at"] + (now - arrived),
    }
