"""A bare ASGI proxy: the floor under the gateway's overhead (bench/overhead.py, issue 19).

    BARE_BACKEND=http://127.0.0.1:8001 python -m uvicorn bench.bare_proxy:app \
        --loop uvloop --http httptools --lifespan on --no-access-log

Forwards every request to BARE_BACKEND as the gateway would reach a backend (one aiohttp
session, pooled, created once at startup; server-sent events passed through chunk by chunk as
they arrive) and does nothing else: no authentication, no limits, no metering. Whatever the
gateway costs beyond this proxy is its own work, not uvicorn's or aiohttp's.
"""

import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_EVENT_STREAM = "text/event-stream"


class BareProxy:
    def __init__(self) -> None:
        self.backend = ""
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.backend = os.environ["BARE_BACKEND"].rstrip("/")
                # As the gateway's session (gateway/clients.py): no pool limit, bodies as sent.
                self.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    auto_decompress=False,
                    skip_auto_headers=("User-Agent",),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Message, receive: Receive, send: Send) -> None:
        assert self.session is not None
        body = await _body(receive)
        url = self.backend + scope["path"]
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode()
        async with self.session.request(
            scope["method"], url, data=body, headers={"content-type": "application/json"}
        ) as response:
            content_type = response.headers.get("content-type", "application/json").encode()
            if response.content_type == _EVENT_STREAM:
                await _stream(response, content_type, send)
            else:
                data = await response.read()
                headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(data))]
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": data})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _stream(response: aiohttp.ClientResponse, content_type: bytes, send: Send) -> None:
    headers = [(b"content-type", content_type), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    async for chunk in response.content.iter_any():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


app = BareProxy()
