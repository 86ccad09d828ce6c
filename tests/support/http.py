"""Raw HTTP for tests that send what no SDK would (malformed bodies, missing keys)."""

import contextlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support.waiting import wait_until


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(method: str, url: str, body: bytes | None = None, key: str | None = None) -> Reply:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return Reply(
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as error:
        return Reply(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


def stream_request(
    base_url: str, key: str, model: str, max_tokens: int = 200
) -> tuple[socket.socket, str]:
    """Start a streamed chat over a raw socket, so a test can hold it open or drop it at will.

    Returns the socket and the request id once the response has started.
    """
    sock, request_id, _ = stream_start(base_url, key, model, max_tokens)
    return sock, request_id


def stream_start(
    base_url: str, key: str, model: str, max_tokens: int = 200
) -> tuple[socket.socket, str, bytes]:
    """stream_request, and what came with the response's head (maybe some of its events)."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens,
            "ignore_eos": True,  # exactly max_tokens, however early the model would stop
            "stream": True,
        }
    ).encode()
    port = int(base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"x-request-id:"):
            return sock, line.split(b":", 1)[1].strip().decode(), head
    raise AssertionError("no x-request-id")


def read_until(
    sock: socket.socket,
    enough: Callable[[bytes], bool],
    *,
    what: str,
    timeout: float = 10.0,
    received: bytes = b"",
) -> bytes:
    """Read from `sock` until what came so far (after `received`, read already) is `enough`;
    returns all of it."""
    data = bytearray(received)

    def more() -> bool:
        with contextlib.suppress(TimeoutError):  # nothing more yet
            data.extend(sock.recv(65536))
        return enough(bytes(data))

    sock.settimeout(0.05)
    try:
        wait_until(more, timeout=timeout, interval=0.01, what=what)
    finally:
        sock.settimeout(None)
    return bytes(data)
