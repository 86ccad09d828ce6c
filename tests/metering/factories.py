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
