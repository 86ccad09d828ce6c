"""OpenAI-compatible inference handlers: chat, completions, embeddings.

Timed mode hands sequences to the model's engine and relays tokens as the engine produces them.
Instant mode (speedup 0) generates synchronously and answers in a single write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from simulator.embeddings import embed, to_base64
from simulator.engine import Engine, Sequence
from simulator.errors import ApiError, error_response
from simulator.faults import Fault
from simulator.parsing import Job, parse_chat, parse_completion, parse_embedding, read_json
from simulator.render import DONE, SSE_HEADERS, ChatRender, CompletionRender, Render
from simulator.state import SIM, Simulator

_FAULT_MESSAGES = {
    429: "Simulated rate limit: too many requests.",
    500: "Simulated internal server error.",
    503: "Simulated outage: service unavailable.",
}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM]
    sim.stats.received(request)
    try:
        body = await read_json(request)
        job = parse_chat(sim, body)
    except ApiError as exc:
        return exc.response()
    sim.stats.record_body(request, body)
    render = ChatRender(
        request_id=sim.new_id("chatcmpl"),
        created=int(time.time()),
        model=job.model,
        include_usage=job.include_usage,
        textgen=sim.textgen,
        reasoning_fraction=job.reasoning_fraction,
    )
    return await _generate(request, sim, job, render)


async def completions(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM]
    sim.stats.received(request)
    try:
        body = await read_json(request)
        job = parse_completion(sim, body)
    except ApiError as exc:
        return exc.response()
    sim.stats.record_body(request, body)
    render = CompletionRender(
        request_id=sim.new_id("cmpl"),
        created=int(time.time()),
        model=job.model,
        include_usage=job.include_usage,
        textgen=sim.textgen,
    )
    return await _generate(request, sim, job, render)


async def embeddings(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM]
    sim.stats.received(request)
    try:
        body = await read_json(request)
        job = parse_embedding(sim, body)
    except ApiError as exc:
        return exc.response()
    sim.stats.record_body(request, body)
    fault = _take_fault(sim)
    if fault is not None and fault.kind != "usage":
        if fault.kind == "status":
            return _status_fault(fault)
        if fault.kind == "disconnect":
            return _cut_connection(request)
        await asyncio.sleep(fault.seconds)
    tokens = sum(prompt.num_tokens for prompt in job.inputs)
    seconds = sim.config.timing.embed_seconds(tokens)
    if not sim.config.instant:
        await asyncio.sleep(sim.config.wall_seconds(seconds))
    embedding_id = sim.new_id("embd")
    data = []
    for index, prompt in enumerate(job.inputs):
        vector = embed(prompt, job.dimensions)
        encoded: object = to_base64(vector) if job.base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    sim.stats.on_embedding(tokens)
    sim.metrics.on_embedding(job.model, tokens)
    sim.power.on_embedding(job.model, request.headers.get("x-request-id") or embedding_id, seconds)
    payload: dict[str, Any] = {
        "id": embedding_id,
        "object": "list",
        "created": int(time.time()),
        "model": job.model,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    if fault is not None and fault.kind == "usage":
        payload["usage"] = fault.misreport(payload["usage"])
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


def _take_fault(sim: Simulator) -> Fault | None:
    fault = sim.faults.take()
    if fault is not None:
        sim.stats.faults[fault.kind] += 1
    return fault


def _status_fault(fault: Fault) -> web.Response:
    message = _FAULT_MESSAGES.get(fault.status, f"Simulated error {fault.status}.")
    if fault.status == 429:
        return error_response(
            429, message, code="rate_limit_exceeded", headers={"retry-after": "1"}
        )
    return error_response(fault.status, message)


def _cut_connection(request: web.Request) -> web.Response:
    """Drop the TCP connection; aiohttp's attempt to send the returned response then fails."""
    if request.transport is not None:
        request.transport.close()
    return web.Response()


async def _generate(
    request: web.Request, sim: Simulator, job: Job, render: Render
) -> web.StreamResponse:
    fault = _take_fault(sim)
    if fault is not None and fault.kind == "usage":
        render.usage_fault, fault = fault, None
    if fault is not None:
        if fault.kind == "status":
            return _status_fault(fault)
        if fault.after_tokens == 0:
            # Nothing at all goes out first: not even headers, so a proxy may still retry.
            if fault.kind == "disconnect":
                return _cut_connection(request)
            await asyncio.sleep(fault.seconds)
            fault = None
    engine = sim.engines[job.model]
    instant = sim.config.instant
    seqs = _sequences(request, sim, job, render)
    if instant:
        for seq in seqs:
            engine.run_instant(seq)
        if fault is None:
            return _instant_response(engine, seqs, render, job)
    else:
        for seq in seqs:
            if fault is not None and fault.kind == "stall":
                seq.stall_at = fault.after_tokens
            engine.submit(seq)
    try:
        if instant:
            assert fault is not None
            if job.stream:
                return await _stream_instant(request, engine, seqs, render, job, fault)
            return await _complete_instant(request, engine, seqs, render, fault)
        if job.stream:
            return await _stream(request, engine, seqs, render, job, fault)
        return await _complete(request, engine, seqs, render, fault)
    except ConnectionResetError:
        # The client went away; returning lets aiohttp drop the connection quietly.
        return web.Response()
    finally:
        for seq in seqs:
            if not seq.done:
                _abort(engine, seq)


def _sequences(request: web.Request, sim: Simulator, job: Job, render: Render) -> list[Sequence]:
    """One sequence per prompt, sharing one wake-up event (none in instant mode)."""
    event = None if sim.config.instant else asyncio.Event()
    client_request_id = request.headers.get("x-request-id")
    seqs = []
    for prompt in job.prompts:
        length, limited = answer_length(
            natural=sim.textgen.natural_length(prompt),
            max_tokens=job.max_tokens,
            ignore_eos=job.ignore_eos,
            room=max(1, sim.config.max_model_len - prompt.num_tokens),
        )
        seq = Sequence(
            request_id=render.request_id,
            model=job.model,
            prompt=prompt,
            max_tokens=length,
            length_limited=limited,
            priority=job.priority,
            client_request_id=client_request_id,
            event=event,
        )
        seqs.append(seq)
    return seqs


def answer_length(
    *, natural: int, max_tokens: int | None, ignore_eos: bool, room: int
) -> tuple[int, bool]:
    """How many tokens an answer gets, and whether a limit (not the model) ended it.

    As a model does: it stops at its end-of-sequence token (`natural`, finish_reason "stop")
    unless `max_tokens` or the context window (`room`) comes first ("length"). With vLLM's
    `ignore_eos` it runs to the limit, exactly `max_tokens` when one is given.
    """
    limit = min(max_tokens, room) if max_tokens is not None else room
    if ignore_eos or natural > limit:
        return limit, True
    return natural, False


def _abort(engine: Engine, seq: Sequence) -> None:
    if seq.event is None:
        # Instant sequences were generated whole; only what reached the client counts.
        engine.finish_instant(seq, delivered=seq.num_generated)
    else:
        engine.abort(seq)


def _instant_response(
    engine: Engine, seqs: list[Sequence], render: Render, job: Job
) -> web.Response:
    """The fault-free instant path: the whole answer in one buffer, sent in one write."""
    if job.stream:
        parts = [
            chunk
            for index, seq in enumerate(seqs)
            for chunk in render.chunks(index, seq, 0, seq.num_generated)
        ]
        if job.include_usage:
            parts.append(render.usage_chunk(seqs))
        parts.append(DONE)
        body = b"".join(parts)
        headers = SSE_HEADERS
    else:
        body = render.body(seqs)
        headers = {"Content-Type": "application/json"}
    for seq in seqs:
        engine.finish_instant(seq, delivered=seq.num_generated)
    return web.Response(body=body, headers=headers)


async def _finish_stream(
    response: web.StreamResponse, seqs: list[Sequence], render: Render, job: Job
) -> None:
    tail = render.usage_chunk(seqs) + DONE if job.include_usage else DONE
    await response.write_eof(tail)


async def _until(event: asyncio.Event, ready: Callable[[], bool]) -> None:
    while not ready():
        event.clear()
        await event.wait()


async def _stream(
    request: web.Request,
    engine: Engine,
    seqs: list[Sequence],
    render: Render,
    job: Job,
    fault: Fault | None,
) -> web.StreamResponse:
    """Relay tokens as the engine makes them; stalls happen in the engine, cuts here."""
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    event = seqs[0].event
    assert event is not None
    cut_after = fault.after_tokens if fault is not None and fault.kind == "disconnect" else None
    sent = [0] * len(seqs)
    total = 0
    while True:
        # Cleared before reading progress, so a token produced while we write wakes us.
        event.clear()
        chunks: list[bytes] = []
        for index, seq in enumerate(seqs):
            generated = seq.num_generated
            if generated > sent[index]:
                chunks += render.chunks(index, seq, sent[index], generated)
                sent[index] = generated
            seq.wake_at = generated + 1
        done = all(seq.done for seq in seqs)
        # A stream shorter than the fault's K is still cut, just before its usage and [DONE].
        if cut_after is not None and (total + len(chunks) >= cut_after or done):
            await response.write(b"".join(chunks[: cut_after - total]))
            _cut_connection(request)
            return response
        if chunks:
            await response.write(b"".join(chunks))
            total += len(chunks)
        if done:
            break
        if fault is not None and any(seq.stalled for seq in seqs):
            await _hold(engine, seqs, fault)
            continue
        await event.wait()
    await _finish_stream(response, seqs, render, job)
    return response


async def _hold(engine: Engine, seqs: list[Sequence], fault: Fault) -> None:
    await asyncio.sleep(fault.seconds)
    for seq in seqs:
        engine.resume(seq)


async def _complete(
    request: web.Request,
    engine: Engine,
    seqs: list[Sequence],
    render: Render,
    fault: Fault | None,
) -> web.StreamResponse:
    event = seqs[0].event
    assert event is not None
    if fault is not None and fault.kind == "disconnect":
        first = seqs[0]
        first.wake_at = fault.after_tokens
        await _until(event, lambda: first.num_generated >= fault.after_tokens or first.done)
        return _cut_connection(request)
    if fault is not None:
        await _until(event, lambda: all(seq.done or seq.stalled for seq in seqs))
        await _hold(engine, seqs, fault)
    await _until(event, lambda: all(seq.done for seq in seqs))
    return web.Response(body=render.body(seqs), content_type="application/json")


async def _stream_instant(
    request: web.Request,
    engine: Engine,
    seqs: list[Sequence],
    render: Render,
    job: Job,
    fault: Fault,
) -> web.StreamResponse:
    """Instant mode with a fault after K > 0 chunks: write K, then stall or cut."""
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    chunks = [
        chunk
        for index, seq in enumerate(seqs)
        for chunk in render.chunks(index, seq, 0, seq.num_generated)
    ]
    cut = fault.after_tokens
    await response.write(b"".join(chunks[:cut]))
    if fault.kind == "disconnect":
        # What reached the client is what counts as generated, taken in choice order.
        remaining = cut
        for seq in seqs:
            seq.num_generated = min(seq.num_generated, remaining)
            remaining -= seq.num_generated
        _cut_connection(request)
        return response
    await asyncio.sleep(fault.seconds)
    if chunks[cut:]:
        await response.write(b"".join(chunks[cut:]))
    for seq in seqs:
        engine.finish_instant(seq, delivered=seq.num_generated)
    await _finish_stream(response, seqs, render, job)
    return response


async def _complete_instant(
    request: web.Request, engine: Engine, seqs: list[Sequence], render: Render, fault: Fault
) -> web.StreamResponse:
    """Instant mode with a fault after K > 0 tokens: stall, or cut with nothing sent."""
    if fault.kind == "disconnect":
        for seq in seqs:
            seq.num_generated = min(seq.num_generated, fault.after_tokens)
        return _cut_connection(request)
    await asyncio.sleep(fault.seconds)
    for seq in seqs:
        engine.finish_instant(seq, delivered=seq.num_generated)
    return web.Response(body=render.body(seqs), content_type="application/json")
