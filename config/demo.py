"""`tf demo`: a minute of realistic traffic through the running `tf up`, then its figures.

A bounded mix (short chats on every tier, long prompts, reasoning, agent calls that share a
cached system prompt; about half of them streamed) goes to the gateway with the demo keys, as
many clients would send it. Then energy, rollups and margins are brought up to date at once
(`manage.py refresh_figures`: the beat would take minutes, and an hour for the rollups) and
the month's finance report is summarised: revenue, cost and margin per tier, tokens per kWh
and how much of the usage had its energy measured.

Only a gateway on this machine is ever called: the keys are the demo's, and the traffic is
bounded in time (`--seconds`), in requests (MAX_REQUESTS) and in each request's tokens.
"""

import asyncio
import csv
import io
import ipaddress
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import aiohttp

MAX_SECONDS = 600.0
# Telemetry scrapes while the traffic runs (the beat's are 5 s apart): enough intervals for a
# fresh backend's energy model within a short demo (docs/energy.md, "Calibration").
SCRAPE_SECONDS = 1.0
MAX_REQUESTS = 5000
# A request that takes longer than this is abandoned (the gateway still meters it).
REQUEST_TIMEOUT_SECONDS = 120.0
WORDS = (  # noqa: SIM905 -- reads better as prose
    "token factory energy watt batch prefill decode gateway backend tensor kernel memory "
    "cluster invoice margin price cost queue latency the of and to in is that for it as was "
    "with be by on not this are or from at which report customer model answer question"
).split()


@dataclass(frozen=True)
class Workload:
    """One kind of client: what it sends and how often."""

    label: str
    tier: str
    workers: int
    # Mean seconds between two requests of one worker (exponential, as independent users).
    gap: float
    prompt_words: tuple[int, int]
    max_tokens: tuple[int, int]
    streamed: float
    reasoning_effort: str | None = None
    # Words of a system prompt every request of this workload shares (the prefix cache's).
    system_words: int = 0


# Sized to each tier's limits (customers/services.py DEFAULT_TIERS): the free worker stays under
# 20 requests and 20,000 tokens a minute, long prompts under interactive's 400,000.
WORKLOADS = (
    Workload("free chat", "free", 1, 3.5, (10, 60), (64, 256), 0.5),
    Workload("interactive chat", "interactive", 6, 0.5, (10, 120), (64, 512), 0.5),
    Workload("long prompts", "interactive", 2, 1.5, (2000, 4000), (32, 128), 0.5),
    Workload("reasoning", "premium", 4, 1.0, (30, 100), (800, 2000), 1.0, "medium"),
    Workload("agent", "premium", 4, 0.4, (50, 600), (64, 512), 0.5, system_words=1000),
)


@dataclass
class Tally:
    """What the traffic did, per tier: requests by outcome, tokens the gateway reported."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    sent: int = 0

    def outcome(self, tier: str, status: int, usage: dict[str, Any] | None) -> None:
        self.requests[tier, "ok" if status == 200 else str(status)] += 1
        if usage:
            self.tokens[tier] += int(usage.get("prompt_tokens", 0))
            self.tokens[tier] += int(usage.get("completion_tokens", 0))


def loopback_check(base_url: str) -> None:
    """The demo drives the local instance only; anything else is a mistake in tf.env."""
    host = urlsplit(base_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"tf demo: {base_url} is not this machine; the demo only runs locally")


def traffic_run(
    *,
    base_url: str,
    keys: dict[str, str],
    model: str,
    seconds: float,
    tally: Tally,
    seed: int = 1,
) -> None:
    """Send the mix for `seconds` (requests under way then are let finish), counting into
    `tally` as answers come, so that an interrupted run still says what it did; at most
    MAX_REQUESTS requests in all."""
    loopback_check(base_url)
    asyncio.run(_traffic(base_url, keys, model, seconds, random.Random(seed), tally))


async def _traffic(
    base_url: str,
    keys: dict[str, str],
    model: str,
    seconds: float,
    rng: random.Random,
    tally: Tally,
) -> None:
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    # trust_env off: a proxy from the environment must not see loopback traffic.
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        workers = [
            _worker(
                session,
                f"{base_url}/chat/completions",
                keys[workload.tier],
                model,
                workload,
                random.Random(rng.random()),
                deadline,
                tally,
            )
            for workload in WORKLOADS
            for _ in range(workload.workers)
        ]
        await asyncio.gather(*workers)


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    model: str,
    workload: Workload,
    rng: random.Random,
    deadline: float,
    tally: Tally,
) -> None:
    system = _words(rng, workload.system_words)
    while True:
        await asyncio.sleep(rng.expovariate(1 / workload.gap))
        if time.monotonic() >= deadline or tally.sent >= MAX_REQUESTS:
            return
        tally.sent += 1
        body = _body(workload, model, system, rng)
        try:
            status, usage = await _call(session, url, key, body)
        except (aiohttp.ClientError, TimeoutError):
            status, usage = 0, None
        tally.outcome(workload.tier, status, usage)


def _body(workload: Workload, model: str, system: str, rng: random.Random) -> dict[str, Any]:
    messages = [{"role": "user", "content": _words(rng, rng.randint(*workload.prompt_words))}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": rng.randint(*workload.max_tokens),
    }
    if workload.reasoning_effort:
        # A reasoning model thinks at length; the simulator's own answers are at most 256
        # tokens, so ask it (as vLLM allows) to use the whole budget.
        body |= {"reasoning_effort": workload.reasoning_effort, "ignore_eos": True}
    if rng.random() < workload.streamed:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choices(WORDS, k=count))


async def _call(
    session: aiohttp.ClientSession, url: str, key: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any] | None]:
    """(status, usage): a streamed answer is read to its end, its usage from the last chunk."""
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(url, json=body, headers=headers) as response:
        if response.status != 200:
            await response.read()
            return response.status, None
        if not body.get("stream"):
            return 200, (await response.json()).get("usage")
        usage = None
        async for line in response.content:
            data = line.removeprefix(b"data: ").strip()
            if data and data != b"[DONE]" and line.startswith(b"data: "):
                usage = json.loads(data).get("usage") or usage
        return 200, usage


def tally_lines(tally: Tally, seconds: float) -> list[str]:
    """What was sent, per tier."""
    lines = [f"Sent {tally.sent:,} requests in {seconds:.0f} s:"]
    for tier in sorted({tier for tier, _ in tally.requests}):
        outcomes = {o: n for (t, o), n in tally.requests.items() if t == tier}
        answered = outcomes.pop("ok", 0)
        refused = ", ".join(f"{n} x {o}" for o, n in sorted(outcomes.items()))
        lines.append(
            f"  {tier:<12} {answered:>5} answered, {tally.tokens[tier]:>10,} tokens"
            + (f"; refused or failed: {refused}" if refused else "")
        )
    return lines


def report_lines(report_csv: str, period: str) -> list[str]:
    """The finance report's tiers and total (from its CSV), as a few lines to read."""
    rows = list(csv.DictReader(io.StringIO(report_csv)))
    shown = [row for row in rows if row["dimension"] in ("total", "tier")]
    if not shown:
        return [f"No margins for {period} yet."]
    total = shown[0]
    lines = [
        f"Finance report {period} so far ({total['currency']}):",
        f"  {'':<16}{'tokens':>12}{'revenue':>11}{'cost':>11}{'margin':>11}"
        f"{'tokens/kWh':>14}{'energy measured':>17}",
    ]
    lines += [_report_line(row) for row in [*shown[1:], total]]
    lines.append(
        f"Energy measured for {_share(total['measured_token_share'])} of the tokens and "
        f"{_share(total['measured_request_share'])} of the requests; tokens per kWh counts "
        f"those only. Unpriced tokens: {int(total['unpriced_tokens']):,}."
    )
    return lines


def _report_line(row: dict[str, str]) -> str:
    label = row["key"] or "total"
    if label == "(unallocated)":
        label = "idle GPU hours"
    return (
        f"  {label:<16}{int(row['tokens']):>12,}{_amount(row['revenue']):>11}"
        f"{_amount(row['cost']):>11}{_amount(row['margin']):>11}"
        f"{_count(row['tokens_per_kwh']):>14}{_share(row['measured_token_share']):>17}"
    )


def _amount(text: str) -> str:
    """A minute of traffic is worth cents: four places show them (the report rounds)."""
    return "unpriced" if text == "" else f"{Decimal(text):,.4f}"


def _count(text: str) -> str:
    return "n/a" if text == "" else f"{float(text):,.0f}"


def _share(text: str) -> str:
    return "n/a" if text == "" else f"{float(text):.1%}"
