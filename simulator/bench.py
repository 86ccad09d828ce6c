"""python -m simulator.bench: a small closed-loop load generator for OpenAI-compatible servers.

Rough by design (one client process, aiohttp): good for checking that a server is not the
bottleneck, not for publishing latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
import orjson


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    deadline: float,
    latencies: list[float],
) -> None:
    headers = {"Content-Type": "application/json"}
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
        latencies.append(time.perf_counter() - started)


async def run(
    *, url: str, model: str, concurrency: int, seconds: float, stream: bool, max_tokens: int
) -> dict[str, Any]:
    body = orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Say something about token factories."}],
            "max_tokens": max_tokens,
            "stream": stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        }
    )
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        endpoint = url.rstrip("/") + "/v1/chat/completions"
        # Warm the connections up so the measurement excludes TCP setup.
        await _worker(session, endpoint, body, time.perf_counter() + 0.2, [])
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(_worker(session, endpoint, body, deadline, latencies) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m simulator.bench")
    parser.add_argument("--url", default="http://127.0.0.1:9101")
    parser.add_argument("--model", default="llama-3.1-8b-instruct")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(
        run(
            url=args.url,
            model=args.model,
            concurrency=args.concurrency,
            seconds=args.seconds,
            stream=args.stream,
            max_tokens=args.max_tokens,
        )
    )
    mode = "stream" if args.stream else "non-stream"
    print(f"{mode} max_tokens={args.max_tokens} concurrency={args.concurrency}: {result}")


if __name__ == "__main__":
    main()
