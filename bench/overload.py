"""Tiered service under overload: the same 2x-capacity load with priority admission and FIFO.

    python -m bench.overload [--seconds 20] [--capacity 16] [--overload 2.0] [--mix 15,25,60]

A simulated backend at real speed (Llama-3.1-8B on one H100: ~10 ms + prompt/20k tok/s to the
first token, 6.7 ms + 0.08 ms x batch per token) runs at most `--capacity` sequences; the
gateway's queue hands out exactly that many slots. An open-loop generator offers
`--overload` x the backend's throughput for `--seconds`, streamed chats of 64 tokens, mixed
premium/interactive/free by `--mix` (percent) over two accounts per tier. For each admission policy
it prints, per tier: requests, share served, time to first token p50/p99, share within the
tier's objective (premium 1 s, interactive 2 s, free 10 s) and share shed (429).
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

import aiohttp
import django

from bench.overhead import _machine, _spawn, _wait_ready
from bench.ports import free_port

MODEL = "overload-model"
TIERS = ("premium", "interactive", "free")
OBJECTIVE_S = {"premium": 1.0, "interactive": 2.0, "free": 10.0}
TOKENS = 64


@dataclass
class Outcome:
    tier: str
    status: int
    ttft_s: float | None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--overload", type=float, default=2.0)
    parser.add_argument("--mix", default="15,25,60", help="premium,interactive,free percent")
    args = parser.parse_args()
    mix = dict(zip(TIERS, (float(share) for share in args.mix.split(",")), strict=True))
    os.environ.setdefault("TF_PROFILE", "local")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    sim_port = free_port()
    keys = _prepare(sim_port, args.capacity)
    # Throughput of a full batch: capacity sequences per (first token + 64 decode steps).
    step_s = (6.7 + 0.08 * args.capacity) / 1000
    rate = args.overload * args.capacity / (0.01 + TOKENS * step_s)
    print(_machine())
    print(
        f"backend capacity {args.capacity} sequences (~{rate / args.overload:.0f} req/s); "
        f"offered {rate:.0f} req/s ({args.overload:g}x) for {args.seconds:g} s; "
        f"premium/interactive/free {args.mix} %\n"
    )
    env = {**os.environ, "LOG_LEVEL": "ERROR"}
    simulator = _spawn(
        ["1"],
        [
            sys.executable,
            "-m",
            "simulator",
            "--port",
            str(sim_port),
            "--model",
            MODEL,
            "--max-num-seqs",
            str(args.capacity),
            "--speedup",
            "1",
        ],
        env,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{sim_port}/health")
        for policy in ("priority", "fifo"):
            outcomes = _run_policy(policy, keys, mix, rate, args.seconds, env)
            _report(policy, outcomes)
    finally:
        simulator.terminate()
        simulator.wait(10)


def _prepare(sim_port: int, capacity: int) -> dict[str, list[str]]:
    from django.core.management import call_command

    from customers.models import LimitOverride
    from customers.services import account_create, api_key_issue
    from fleet.services import backend_register

    call_command("migrate", verbosity=0)
    from customers.services import tiers_ensure_defaults

    tiers_ensure_defaults()
    backend_register(
        name="overload-sim",
        base_url=f"http://127.0.0.1:{sim_port}",
        upstream_model=MODEL,
        public_models=[MODEL],
        max_concurrent_sequences=capacity,
    )
    keys: dict[str, list[str]] = defaultdict(list)
    for tier in TIERS:
        for _ in range(2):
            account = account_create(name=f"overload-{tier}-{uuid.uuid4().hex[:6]}", tier_slug=tier)
            # Rates and quotas out of the way: this measures admission, not limits.
            LimitOverride.objects.create(
                account=account,
                requests_per_minute=10**6,
                tokens_per_minute=10**9,
                tokens_per_day=10**12,
                tokens_per_month=10**12,
                max_concurrent_requests=10**4,
            )
            keys[tier].append(api_key_issue(account=account).plaintext)
    return keys


def _run_policy(
    policy: str,
    keys: dict[str, list[str]],
    mix: dict[str, float],
    rate: float,
    seconds: float,
    env: dict[str, str],
) -> list[Outcome]:
    port = free_port()
    gateway = _spawn(
        ["0"],
        [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
        ],
        {**env, "GATEWAY_ADMISSION": policy},
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz")
        return asyncio.run(_offer(f"http://127.0.0.1:{port}", keys, mix, rate, seconds))
    finally:
        gateway.terminate()
        gateway.wait(10)


async def _offer(
    base: str, keys: dict[str, list[str]], mix: dict[str, float], rate: float, seconds: float
) -> list[Outcome]:
    """Open loop: Poisson arrivals at `rate`, whatever the answers."""
    rng = random.Random(7)
    tiers, weights = list(mix), list(mix.values())
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        tasks = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tier = rng.choices(tiers, weights)[0]
            tasks.append(asyncio.create_task(_one(session, base, tier, rng.choice(keys[tier]))))
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


async def _one(session: aiohttp.ClientSession, base: str, tier: str, key: str) -> Outcome:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me about tiers."}],
        "max_tokens": TOKENS,
        "ignore_eos": True,  # every answer exactly TOKENS long: capacity is known
        "stream": True,
    }
    started = time.monotonic()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with session.post(
        base + "/v1/chat/completions", data=json.dumps(body), headers=headers
    ) as response:
        ttft = None
        async for line in response.content:
            if ttft is None and line.startswith(b"data: {") and b'"content":"' in line:
                ttft = time.monotonic() - started
        return Outcome(tier, response.status, ttft)


def _report(policy: str, outcomes: list[Outcome]) -> None:
    print(f"admission: {policy}")
    print(
        f"  {'tier':<12}{'requests':>9}{'served':>8}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'in objective':>14}{'shed':>7}"
    )
    for tier in TIERS:
        mine = [o for o in outcomes if o.tier == tier]
        served = [o for o in mine if o.status == 200 and o.ttft_s is not None]
        ttfts = sorted(o.ttft_s for o in served if o.ttft_s is not None)
        within = sum(t <= OBJECTIVE_S[tier] for t in ttfts)
        shed = sum(o.status == 429 for o in mine)
        p50 = statistics.median(ttfts) if ttfts else float("nan")
        p99 = ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))] if ttfts else float("nan")
        print(
            f"  {tier:<12}{len(mine):>9}{len(served) / len(mine):>8.0%}{p50:>9.2f}s"
            f"{p99:>9.2f}s{within / len(mine):>14.0%}{shed / len(mine):>7.0%}"
        )
    print()


if __name__ == "__main__":
    main()
