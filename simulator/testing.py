"""Helpers for tests of the simulator and of anything that proxies it."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10) -> HttpResult:
    """One blocking request; HTTP error statuses are results, connection failures raise."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http URL: {url}")
    request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 -- checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return HttpResult(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return HttpResult(exc.code, exc.headers, exc.read())


def parse_sse(body: bytes) -> list[Any]:
    """The data of each server-sent event: decoded JSON, or the raw string (e.g. "[DONE]")."""
    events: list[Any] = []
    for block in body.split(b"\n\n"):
        if not block.startswith(b"data: "):
            continue
        data = block[len(b"data: ") :]
        events.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return events
