"""Usage events as gateways put them on the stream, for the meter's and the ledger's tests."""

import time
import uuid
from typing import Any


def usage(**overrides: Any) -> dict[str, Any]:
    """A finished request's usage as a gateway puts it on the stream (timestamps in seconds)."""
    started = time.time()
    return {
        "request_id": str(uuid.uuid4()),
        "account_id": 1,
        "api_key_id": 2,
        "tier": "free",
        "model": "m",
        "backend": "b",
        "endpoint": "chat.completions",
        "prompt_tokens": 10,
        "cached_prompt_tokens": 0,
        "completion_tokens": 5,
        "reasoning_tokens": 0,
        "tokens_estimated": False,
        "queue_wait_ms": 0.0,
        "ttft_ms": 12.5,
        "latency_ms": 40.0,
        "status_code": 200,
        "outcome": "ok",
        "streamed": True,
        "started_at": started,
        "ended_at": started + 0.04,
        **overrides,
    }


# What a gateway's in-flight entry holds while the request runs (gateway/inflight.py).
INFLIGHT_FIELDS = (
    "request_id",
    "account_id",
    "api_key_id",
    "tier",
    "model",
    "backend",
    "endpoint",
    "streamed",
    "started_at",
    "prompt_tokens",
    "queue_wait_ms",
)


def inflight_entry(**overrides: Any) -> dict[str, Any]:
    """The in-flight entry of the request whose final usage `usage(**overrides)` is."""
    final = usage(**overrides)
    return {field: final[field] for field in INFLIGHT_FIELDS}
