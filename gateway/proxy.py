"""Forwarding one admitted request to a backend and its answer back to the client.

A request is retried on the next candidate backend while nothing has been sent to the client:
connection failures, 429 and 5xx answers, and streams that fail before their first byte.
Streams are passed through event by event as they arrive; the gateway always asks the backend
for the usage chunk and forwards it only if the client asked for it.
"""

import asyncio
import time
from collections.abc import Callable
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
# Chunks that carry no generated token: role announcements and finish markers.
_EMPTY_MARKS = (
    b'"content":""',
    b'"content": ""',
    b'"text":""',
    b'"text": ""',
    b'"delta":{}',
    b'"delta": {}',
)
_USAGE_NULL = (b'"usage":null', b'"usage": null')
_DONE = b"data: [DONE]"


class _Retry(Exception):
    """This backend failed before anything reached the client; try the next one."""

    def __init__(self, error: ApiError, *, eject: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.eject = eject


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

        `headers` go on the response whatever it is (the rate-limit state).
        """
        error = backend_failed(502, "No backend could serve the request.")
        for backend in backends[: self.max_attempts]:
            backend.outstanding += 1
            try:
                return await self._attempt(
                    request, backend, request_id, headers, send, receive, progress
                )
            except _Retry as retry:
                error = retry.error
                if retry.eject:
                    self.router.failed(backend)
            finally:
                backend.outstanding -= 1
        await send_error(send, error, request_id, headers)
        outcome = "rejected" if error.status == 429 else "backend_error"
        return Forwarded(backends[0], error.status, outcome)

    async def _attempt(
        self,
        request: InferenceRequest,
        backend: Backend,
        request_id: str,
        headers: Headers,
        send: Send,
        receive: Receive,
        progress: Progress,
    ) -> Forwarded:
        body = dict(request.body, model=backend.upstream_model)
        if backend.supports_priority:
            body["priority"] = request.served_class
        if request.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            response = await self.session.post(
                backend.urls[request.endpoint],
                data=orjson.dumps(body),
                headers={"content-type": "application/json", "x-request-id": request_id},
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retry(_unreachable(backend, exc), eject=True) from _forget(exc)
        try:
            if response.status == 429 or response.status >= 500:
                raise _Retry(
                    await _backend_refusal(response, backend), eject=response.status >= 500
                )
            rewrite = _rewriter(
                backend.model_renames.get(request.model),
                None if request.endpoint == EMBEDDINGS else CLASS_NAMES[request.served_class],
            )
            if response.status != 200:
                return await _forward_client_error(response, backend, request_id, headers, send)
            if request.stream:
                return await _stream(
                    response,
                    backend,
                    request,
                    request_id,
                    headers,
                    send,
                    receive,
                    progress,
                    rewrite,
                )
            return await _whole(response, backend, request_id, headers, send, rewrite)
        finally:
            response.release()


async def _whole(
    response: aiohttp.ClientResponse,
    backend: Backend,
    request_id: str,
    headers: Headers,
    send: Send,
    rewrite: Callable[[bytes], bytes] | None,
) -> Forwarded:
    try:
        data = await response.read()
        usage = orjson.loads(data).get("usage")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _Retry(_unreachable(backend, exc), eject=True) from _forget(exc)
    except (orjson.JSONDecodeError, AttributeError) as exc:
        raise _Retry(
            backend_failed(502, "The backend sent an unreadable answer."), eject=True
        ) from _forget(exc)
    if rewrite:
        data = rewrite(data)
    await send_body(send, 200, data, request_id, headers)
    return Forwarded(backend, 200, usage=usage)


async def _stream(
    response: aiohttp.ClientResponse,
    backend: Backend,
    request: InferenceRequest,
    request_id: str,
    headers: Headers,
    send: Send,
    receive: Receive,
    progress: Progress,
    rewrite: Callable[[bytes], bytes] | None,
) -> Forwarded:
    result = Forwarded(backend, 200)
    chunks = response.content.iter_any()
    try:
        pending = await anext(chunks)
    except (aiohttp.ClientError, TimeoutError, StopAsyncIteration) as exc:
        # Nothing has reached the client yet, so another backend may still serve it.
        raise _Retry(_unreachable(backend, exc), eject=True) from _forget(exc)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_SSE_HEADERS, (b"x-request-id", request_id.encode()), *headers],
        }
    )
    disconnected = asyncio.Event()
    reader = asyncio.current_task()
    assert reader is not None
    watcher = asyncio.create_task(_watch_disconnect(receive, reader, disconnected))
    done = False
    try:
        buffer = b""
        while True:
            events = (buffer + pending).split(b"\n\n")
            buffer = events.pop()
            out = []
            for event in events:
                if event.startswith(_DONE):
                    done = True
                elif b'"usage"' in event and not any(m in event for m in _USAGE_NULL):
                    result.usage = orjson.loads(event[5:]).get("usage")
                    if not request.include_usage:
                        continue
                elif not any(mark in event for mark in _EMPTY_MARKS):
                    progress.completion_tokens += 1
                    if result.first_token_at is None:
                        result.first_token_at = time.monotonic()
                if rewrite and not event.startswith(_DONE):
                    event = rewrite(event)
                out.append(event)
            if out:
                out.append(b"")
                await send(
                    {"type": "http.response.body", "body": b"\n\n".join(out), "more_body": True}
                )
            pending = await anext(chunks)
    except StopAsyncIteration:
        pass
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        _forget(exc)
        done = False
    except asyncio.CancelledError:
        # Cancelled by the watcher (the client left) and by nobody else: the stream is over.
        if not disconnected.is_set() or reader.uncancel() > 0:
            raise
    finally:
        watcher.cancel()
    if disconnected.is_set():
        result.outcome, result.status_code = "client_disconnected", 499
        return result
    if not done:
        result.outcome, result.status_code = "backend_error", 502
        error = backend_failed(
            502, f"The backend {backend.name} failed in the middle of the answer."
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + error.body() + b"\n\n",
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return result


async def _watch_disconnect(
    receive: Receive, reader: "asyncio.Task[Any]", disconnected: asyncio.Event
) -> None:
    """Stop relaying as soon as the client goes away; releasing the response then closes
    the upstream connection, which cancels the backend's request.

    The reader is cancelled rather than the response closed under it: closing makes the
    pending read raise aiohttp's one module-level "Connection closed" exception, whose
    traceback would then hold this request's frames for ever, and grow with every drop.
    """
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()
    reader.cancel()


async def _forward_client_error(
    response: aiohttp.ClientResponse,
    backend: Backend,
    request_id: str,
    headers: Headers,
    send: Send,
) -> Forwarded:
    """The backend refused the request itself (too long a context, say): the client's to fix."""
    data = await response.read()
    try:
        message = orjson.loads(data)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = data.decode(errors="replace")[:500] or "The backend rejected the request."
    error = invalid_request(str(message))
    await send_error(send, error, request_id, headers)
    return Forwarded(backend, 400, "rejected")


async def _backend_refusal(response: aiohttp.ClientResponse, backend: Backend) -> ApiError:
    await response.read()
    if response.status == 429:
        return unavailable(
            f"The backend {backend.name} is overloaded; retry shortly.",
            code="backend_overloaded",
            retry_after=response.headers.get("retry-after", "1"),
        )
    return backend_failed(502, f"The backend {backend.name} failed ({response.status}).")


def _rewriter(
    rename: tuple[bytes, bytes] | None, service_tier: str | None
) -> Callable[[bytes], bytes] | None:
    """Edits to the backend's JSON on its way out: the public model name, the tier served."""
    tag = f'{{"service_tier":"{service_tier}",'.encode() if service_tier else None
    if rename is None and tag is None:
        return None

    def rewrite(payload: bytes) -> bytes:
        if rename is not None:
            payload = payload.replace(*rename, 1)
        if tag is not None and b'"service_tier"' not in payload:
            payload = payload.replace(b'{"', tag + b'"', 1)
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


def _unreachable(backend: Backend, exc: BaseException) -> ApiError:
    if isinstance(exc, TimeoutError):
        return backend_failed(504, f"The backend {backend.name} did not answer in time.")
    return backend_failed(502, f"The backend {backend.name} could not be reached.")
