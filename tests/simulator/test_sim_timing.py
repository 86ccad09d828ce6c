"""The timing model at real speed (speedup 1) and the scheduler's priority order.

Tolerances are wide on purpose: these run on shared, noisy machines.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
import uuid

import aiohttp
import pytest

from simulator import SimServer, TimingModel
from simulator.__main__ import parse_args
from simulator.config import DEFAULT_MODEL as MODEL
from tests.support.waiting import wait_until_async


async def _stream_arrivals(url: str, content: str, max_tokens: int) -> tuple[float, list[float]]:
    """Seconds from sending to each token chunk's arrival."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "ignore_eos": True,  # exactly max_tokens, whatever the (random) prompt's own length
        "stream": True,
    }
    arrivals: list[float] = []
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            async for line in response.content:
                if line.startswith(b"data: {"):
                    arrivals.append(time.perf_counter() - started)
    return arrivals[0], arrivals


@pytest.mark.asyncio
async def test_time_to_first_token_follows_the_prefill_model(realtime: SimServer) -> None:
    content = uuid.uuid4().hex + " word" * 1993  # 1994 tokens + 6 of chat template = 2000
    timing = TimingModel()
    expected = timing.prefill_base_s + 2000 / timing.prefill_tokens_per_s  # 110 ms

    ttft, _ = await _stream_arrivals(realtime.url, content, max_tokens=1)

    assert 0.5 * expected <= ttft <= 3 * expected


@pytest.mark.asyncio
async def test_tokens_arrive_one_by_one_at_the_decode_rate(realtime: SimServer) -> None:
    timing = TimingModel()
    expected = timing.decode_base_s + timing.decode_per_seq_s  # a batch of one

    _, arrivals = await _stream_arrivals(realtime.url, uuid.uuid4().hex, max_tokens=30)

    inter_token = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    assert len(arrivals) == 30
    assert 0.5 * expected <= inter_token <= 3 * expected


@pytest.mark.asyncio
async def test_a_full_batch_admits_by_priority_then_arrival(single_seq: SimServer) -> None:
    finished: list[str] = []
    url = f"{single_seq.url}/v1/chat/completions"

    async with aiohttp.ClientSession() as session:

        async def ask(name: str, priority: int, max_tokens: int) -> None:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": name}],
                "max_tokens": max_tokens,
                "priority": priority,
            }
            async with session.post(url, json=body) as response:
                assert response.status == 200
                await response.read()
            finished.append(name)

        async def engine() -> dict[str, int]:
            async with session.get(f"{single_seq.url}/_sim/stats") as response:
                return dict((await response.json())["engines"][MODEL])

        async def arrived(running: int, waiting: int) -> bool:
            return await engine() == {"running": running, "waiting": waiting}

        # The only batch slot is taken for ~100 ms while the others queue behind it, each
        # after the one before (the order of arrival breaks ties).
        tasks = [asyncio.create_task(ask("blocker", 0, 30))]
        await wait_until_async(lambda: arrived(1, 0), interval=0.002, what="the blocker")
        for waiting, (name, priority) in enumerate(
            [("low", 5), ("zero-a", 0), ("zero-b", 0), ("urgent", -1)], 1
        ):
            tasks.append(asyncio.create_task(ask(name, priority, 2)))
            await wait_until_async(
                lambda waiting=waiting: arrived(1, waiting),
                interval=0.002,
                what=f"{name} to queue behind the blocker",
            )
        await asyncio.gather(*tasks)

    assert finished == ["blocker", "urgent", "zero-a", "zero-b", "low"]


@pytest.mark.asyncio
async def test_a_paced_backend_keeps_its_pace_whatever_the_prompt_and_the_batch() -> None:
    config = parse_args(["--port", "0", "--paced", "50", "10"])
    with SimServer(config) as paced:
        await _stream_arrivals(paced.url, "warm-up", max_tokens=1)  # the server's first answer
        long_prompt = uuid.uuid4().hex + " word" * 3000
        (ttft_short, short), (ttft_long, _), *_ = await asyncio.gather(
            _stream_arrivals(paced.url, uuid.uuid4().hex, max_tokens=20),
            _stream_arrivals(paced.url, long_prompt, max_tokens=1),
            *(_stream_arrivals(paced.url, uuid.uuid4().hex, max_tokens=20) for _ in range(30)),
        )

    # Never sooner than the pace; 3,000 prompt tokens no later than a few. The bounds are
    # relative or medians: a loaded machine may stall every stream at once (CI saw 0.6 s).
    assert ttft_short >= 0.04 and ttft_long >= 0.04
    assert ttft_long <= ttft_short + 0.1
    gaps = [later - earlier for earlier, later in itertools.pairwise(short)]
    # A batch of 32 decodes at 10 ms a token (a prefill pass of late arrivals may stall one).
    assert 0.008 <= statistics.median(gaps) <= 0.03


def test_the_cli_refuses_a_pace_of_zero() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--paced", "0", "10"])
