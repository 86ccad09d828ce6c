"""What reached this backend, for tests of the gateway in front of it (GET /_sim/stats)."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from aiohttp import web

from simulator.engine import SeqState, Sequence, Step

_RECENT = 100


class Stats:
    """Engine observer counting requests, outcomes and tokens since start or the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.completed = 0
        self.aborted = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.generation_tokens = 0
        self.embedding_tokens = 0
        # Keeps references only; bodies and headers are rendered when someone asks.
        self._recent: deque[tuple[str, Any, object]] = deque(maxlen=_RECENT)

    def received(self, request: web.Request) -> None:
        self.requests[request.path] += 1

    def record_body(self, request: web.Request, body: object) -> None:
        self._recent.append((request.path, request.headers, body))

    def on_step(self, step: Step) -> None:
        pass

    def on_finish(self, seq: Sequence) -> None:
        if seq.state is SeqState.ABORTED:
            self.aborted += 1
        else:
            self.completed += 1
        if seq.scheduled_at is not None:
            self.prompt_tokens += seq.num_prompt_tokens
            self.cached_tokens += seq.cached_tokens
        self.generation_tokens += seq.num_generated

    def on_embedding(self, tokens: int) -> None:
        self.completed += 1
        self.embedding_tokens += tokens

    def snapshot(self, recent: int = 0) -> dict[str, Any]:
        """Counters, plus the last `recent` requests' bodies and headers, newest last."""
        latest = list(self._recent)[-recent:] if recent > 0 else []
        return {
            "requests": dict(self.requests),
            "received": sum(self.requests.values()),
            "completed": self.completed,
            "aborted": self.aborted,
            "faults": dict(self.faults),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "generation_tokens": self.generation_tokens,
            "embedding_tokens": self.embedding_tokens,
            "recent": [
                {"path": path, "headers": _redacted(headers), "body": body}
                for path, headers, body in latest
            ],
        }


def _redacted(headers: Any) -> dict[str, str]:
    # Enough to assert that a gateway sent *a* credential without echoing it back.
    return {
        # str(): header names are multidict's istr, which orjson refuses as keys.
        str(name): "<redacted>" if name.lower() == "authorization" else value
        for name, value in headers.items()
    }
