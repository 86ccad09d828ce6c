"""Raw ASGI response helpers for the hot path (no framework in between)."""

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.errors import ApiError

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Headers = tuple[tuple[bytes, bytes], ...]

_JSON = (b"content-type", b"application/json")


async def send_body(
    send: Send, status: int, body: bytes, request_id: str, extra: Headers = ()
) -> None:
    headers = [
        _JSON,
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: object, request_id: str) -> None:
    await send_body(send, status, orjson.dumps(payload), request_id)


async def send_error(send: Send, error: ApiError, request_id: str, extra: Headers = ()) -> None:
    await send_body(send, error.status, error.body(), request_id, extra + error.headers)
