"""Forwarding one admitted request to a backend and its answer back to the client.

A request goes to the next candidate backend only while nothing has reached the client and
no backend is still working on it: the connection failed or broke, or the backend declined it
for now (429, 503). A backend that answered 5xx, or that went silent past the read timeout
(it may still be generating: a second backend would generate the answer twice), ends it.
A failure of the backend's counts against its circuit breaker (gateway/breaker.py); a 4xx
is the client's.
Streams are passed through event by event as they arrive; the gateway always asks the backend
for the usage chunk and forwards it only if the client asked for it. A client that leaves,
streamed or not, ends the upstream request at once.
"""

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.errors import ApiError, backend_failed, invalid_request, unavailable
from gateway.inflight import Progress
from gateway.responses import Headers, Receive, Send, send_body, send_error
from gateway.routing import Backend, Router
from gateway.validation import CLASS_NAMES, EMBEDDINGS, InferenceRequest

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# The usage chunk (engines send `"usage":null` in the others).
_USAGE = re.compile(rb'"usage": ?(?!null)')
# An event that carries a generated token: a data line that is not the end, not the usage
# chunk and not a chunk without content (a role announcement, a finish marker). Counted over
# each block of events the backend sends, in C: this runs for every token streamed.
_TOKEN_EVENT = re.compile(
    rb'^data: (?!\[DONE\])(?![^\n]*(?:"(?:content|text)": ?""|"delta": ?\{\}|"usage": ?(?!null)))',
    re.MULTILINE,
)
_DONE = b"data: [DONE]"
# Statuses by which a backend declines a request without starting it: another may take it.
_DECLINED = (429, 503)
# What of a backend's 4xx error reaches the client: its message, as OpenAI-compatible
# engines phrase it for the client (a context too long, say); nothing else of the body.
_SHOWN_CHARS = 300

log = logging.getLogger(__name__)


class _Unserved(Exception):
    """This backend did not serve the request and nothing reached the client. `again`: it
    never took the request on, so the next backend may; `fault`: the backend's failure."""

    def __init__(self, error: ApiError, *, again: bool, fault: bool = True) -> None:
        super().__init__(error.message)
        self.error = error
        self.again = again
        self.fault = fault


@dataclass(slots=True)
class Forwarded:
    """What forwarding learned, for the usage record."""

    backend: Backend
    status_code: int
    outcome: str = "ok"
    usage: dict[str, Any] | None = None
    first_token_at: float | None = None


class Proxy:
    def __init__(self, session: aiohttp.ClientSession, router: Router, *, max_attempts: int):
        self.session = session
        self.router = router
        self.max_attempts = max_attempts

    async def forward(
        self,
        request: InferenceRequest,
        backends: list[Backend],
        *,
        request_id: str,
        headers: Headers,
        send: Send,
        receive: Receive,
        progress: Progress,
    ) -> Forwarded:
        """Send the answer (or an error) to the client; returns what happened for metering.

        `headers` go on the response whatever it is (the rate-limit state). A client that
        leaves ends the attempt in progress, streamed or not, waiting for headers or not.
        """
        error = backend_failed(502, "No backend could serve the request.")
        result = Forwarded(backends[0], 200)
        async with _until_disconnect(receive) as disconnected:
            for backend in backends[: self.max_attempts]:
                result = Forwarded(backend, 200)
                try:
                    await self._attempt(request, result, request_id, headers, send, progress)
                except _Unserved as unserved:
                    error = unserved.error
                    if unserved.fault:
                        self.router.failed(backend)
                    if unserved.again:
                        continue
                    break
                if result.outcome == "backend_error":
                    self.router.failed(backend)
                else:
                    self.router.succeeded(backend)
                return result
        if disconnected.is_set():
            # Whatever the backend had generated, the upstream request ended with the client.
            self.router.abandoned(result.backend)
            result.outcome, result.status_code = "client_disconnected", 499
            return result
        await send_error(send, error, request_id, headers)
        outcome = "rejected" if error.status == 429 else "backend_error"
        return Forwarded(backends[0], error.status, outcome)

    async def _attempt(
        self,
        request: InferenceRequest,
        result: Forwarded,
        request_id: str,
        headers: Headers,
        send: Send,
        progress: Progress,
    ) -> None:
        """One backend's try, filling `result`; _Unserved if nothing reached the client."""
        backend = result.backend
        body = dict(request.body, model=backend.upstream_model)
        if backend.supports_priority:
            body["priority"] = request.served_class
        if request.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        backend.outstanding += 1
        self.router.attempt(backend)
        try:
            await self._exchange(request, result, body, request_id, headers, send, progress)
        finally:
            backend.outstanding -= 1

    async def _exchange(
        self,
        request: InferenceRequest,
        result: Forwarded,
        body: dict[str, Any],
        request_id: str,
        headers: Headers,
        send: Send,
        progress: Progress,
    ) -> None:
        backend = result.backend
        try:
            response = await self.session.post(
                backend.urls[request.endpoint],
                data=orjson.dumps(body),
                headers={"content-type": "application/json", "x-request-id": request_id},
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _broken(backend, exc) from _forget(exc)
        try:
            if response.status in _DECLINED or response.status >= 500:
                await response.read()
                raise _Unserved(
                    _backend_refusal(response, backend),
                    again=response.status in _DECLINED,
                    fault=response.status != 429,
                )
            rewrite = _rewriter(
                backend.model_renames.get(request.model),
                None if request.endpoint == EMBEDDINGS else CLASS_NAMES[request.served_class],
                stream=request.stream,
            )
            if response.status != 200:
                await _forward_client_error(response, result, request_id, headers, send)
            elif request.stream:
                await _stream(
                    response, result, request, request_id, headers, send, progress, rewrite
                )
            else:
                await _whole(response, result, request_id, headers, send, rewrite)
        finally:
            response.release()


async def _whole(
    response: aiohttp.ClientResponse,
    result: Forwarded,
    request_id: str,
    headers: Headers,
    send: Send,
    rewrite: Callable[[bytes], bytes] | None,
) -> None:
    try:
        data = await response.read()
        result.usage = orjson.loads(data).get("usage")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _broken(result.backend, exc) from _forget(exc)
    except (orjson.JSONDecodeError, AttributeError) as exc:
        unreadable = backend_failed(502, "The backend sent an unreadable answer.")
        raise _Unserved(unreadable, again=False) from _forget(exc)
    if rewrite:
        data = rewrite(data)
    await send_body(send, 200, data, request_id, headers)


async def _stream(
    response: aiohttp.ClientResponse,
    result: Forwarded,
    request: InferenceRequest,
    request_id: str,
    headers: Headers,
    send: Send,
    progress: Progress,
    rewrite: Callable[[bytes], bytes] | None,
) -> None:
    chunks = response.content.iter_any()
    try:
        pending = await anext(chunks)
    except (aiohttp.ClientError, TimeoutError, StopAsyncIteration) as exc:
        # Nothing has reached the client yet.
        raise _broken(result.backend, exc) from _forget(exc)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_SSE_HEADERS, (b"x-request-id", request_id.encode()), *headers],
        }
    )
    done = False
    try:
        buffer = b""
        while True:
            data = buffer + pending
            # The complete events so far, each ending in a blank line; the rest waits.
            end = data.rfind(b"\n\n") + 2
            block, buffer = data[:end], data[end:]
            if block:
                done = done or _DONE in block
                if (usage := _USAGE.search(block)) is not None:
                    block = _usage_taken(block, usage.start(), usage.end(), result, request)
                if tokens := len(_TOKEN_EVENT.findall(block)):
                    progress.completion_tokens += tokens
                    if result.first_token_at is None:
                        result.first_token_at = time.monotonic()
                if rewrite:
                    block = rewrite(block)
                if block:
                    await send({"type": "http.response.body", "body": block, "more_body": True})
            pending = await anext(chunks)
    except StopAsyncIteration:
        pass
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        _forget(exc)
        done = False
    if not done:
        result.outcome, result.status_code = "backend_error", 502
        error = backend_failed(
            502, f"The backend {result.backend.name} failed in the middle of the answer."
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + error.body() + b"\n\n",
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _usage_taken(
    block: bytes, start: int, end: int, result: Forwarded, request: InferenceRequest
) -> bytes:
    """Read the usage chunk found at block[start:end]; the block without it unless the client
    asked for usage (the gateway always asks the backend for it)."""
    first = block.rfind(b"\n\n", 0, start)
    first = 0 if first < 0 else first + 2
    last = block.index(b"\n\n", end) + 2
    result.usage = orjson.loads(block[first + 5 : last - 2]).get("usage")
    return block if request.include_usage else block[:first] + block[last:]


@asynccontextmanager
async def _until_disconnect(receive: Receive) -> AsyncIterator[asyncio.Event]:
    """Run the block until it ends or the client goes away, whichever is first; the event
    says which. Releasing the response afterwards closes the upstream connection, which
    cancels the backend's request.

    The block's task is cancelled rather than the response closed under it: closing makes
    the pending read raise aiohttp's one module-level "Connection closed" exception, whose
    traceback would then hold this request's frames for ever, and grow with every drop.
    """
    disconnected = asyncio.Event()
    reader = asyncio.current_task()
    assert reader is not None
    watcher = asyncio.create_task(_watch_disconnect(receive, reader, disconnected))
    try:
        yield disconnected
    except asyncio.CancelledError:
        # Cancelled by the watcher (the client left) and by nobody else: the block is over.
        if not disconnected.is_set() or reader.uncancel() > 0:
            raise
    finally:
        watcher.cancel()


async def _watch_disconnect(
    receive: Receive, reader: "asyncio.Task[Any]", disconnected: asyncio.Event
) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()
    reader.cancel()


async def _forward_client_error(
    response: aiohttp.ClientResponse,
    result: Forwarded,
    request_id: str,
    headers: Headers,
    send: Send,
) -> None:
    """The backend refused the request itself (too long a context, say): the client's to fix.

    Only an OpenAI-shaped error's message is shown: whatever else the body holds (an HTML
    page, a stack trace, another service's answer) stays in the log with the request id.
    """
    data = await response.read()
    try:
        message = orjson.loads(data)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = None
    if not isinstance(message, str) or not message:
        log.warning(
            "backend refused a request without an OpenAI-shaped error",
            extra={
                "request_id": request_id,
                "backend": result.backend.name,
                "status": response.status,
                "body": data[:2000].decode(errors="replace"),
            },
        )
        message = f"The backend rejected the request (request id {request_id})."
    error = invalid_request(message[:_SHOWN_CHARS])
    await send_error(send, error, request_id, headers)
    result.outcome, result.status_code = "rejected", 400


def _backend_refusal(response: aiohttp.ClientResponse, backend: Backend) -> ApiError:
    if response.status == 429:
        return unavailable(
            f"The backend {backend.name} is overloaded; retry shortly.",
            code="backend_overloaded",
            retry_after=response.headers.get("retry-after", "1"),
        )
    return backend_failed(502, f"The backend {backend.name} failed ({response.status}).")


def _rewriter(
    rename: tuple[bytes, bytes] | None, service_tier: str | None, *, stream: bool
) -> Callable[[bytes], bytes] | None:
    """Edits to the backend's JSON on its way out: the public model name, the tier served.
    For a stream, to a block of whole events at once, each event's object edited."""
    tag = f'{{"service_tier":"{service_tier}",'.encode() if service_tier else None
    if rename is None and tag is None:
        return None
    # Where the tier goes: each event's object, or the answer's; `{"` becomes `<tag>"`.
    opening, count = (b'data: {"', -1) if stream else (b'{"', 1)
    tagged = None if tag is None else opening[:-2] + tag + b'"'

    def rewrite(payload: bytes) -> bytes:
        if rename is not None:
            # Only the key can match: inside a string its quotes are escaped.
            payload = payload.replace(*rename, count)
        if tagged is not None:
            if b'"service_tier"' not in payload:
                payload = payload.replace(opening, tagged, count)
            elif stream:  # the engine names a tier in some events: tag the others
                payload = b"\n\n".join(
                    event if b'"service_tier"' in event else event.replace(opening, tagged, 1)
                    for event in payload.split(b"\n\n")
                )
        return payload

    return rewrite


def _forget(exc: BaseException) -> BaseException:
    """Drop what an aiohttp exception carries of this request before it is let go.

    aiohttp raises some failures as one shared, module-level instance (a closed
    connection's): each raise adds this request's frames to its traceback, and a context
    or cause would hang this request's objects on it, so it would grow for ever.
    """
    exc.__traceback__ = exc.__context__ = exc.__cause__ = None
    return exc


def _broken(backend: Backend, exc: BaseException) -> _Unserved:
    """The connection failed or broke before anything reached the client: the next backend
    may serve the request. A timeout is different: the backend may still be generating."""
    return _Unserved(_unreachable(backend, exc), again=not isinstance(exc, TimeoutError))


def _unreachable(backend: Backend, exc: BaseException) -> ApiError:
    if isinstance(exc, TimeoutError):
        return backend_failed(504, f"The backend {backend.name} did not answer in time.")
    return backend_failed(502, f"The backend {backend.name} could not be reached.")
