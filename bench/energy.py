"""Energy attribution: accuracy against the simulator's ground truth, and what the jobs cost.

    python -m bench.energy [--seconds 60] [--rate 25] [--runs 1] [--gpus 2] [--backends 1]
                           [--mix default] [--train-mix chat-heavy --train-seconds 60]
                           [--records 200000] [--skip-accuracy] [--skip-cost]

Needs this machine's PostgreSQL and Redis (DATABASE_URL / REDIS_URL; the database is migrated).

Accuracy: a simulated backend (a tensor-parallel group of `--gpus` GPUs at `--speedup`) behind
the gateway; twelve accounts on all tiers send chats, essays, long prompts, long reasoning
outputs and agent requests with a shared system prompt, Poisson arrivals at `--rate` req/s for
`--seconds`, in the shares `--mix` gives. With `--backends 2` a second backend serves a larger
model (prompts computed 5x slower, decode steps 3x longer) on as many GPUs, both scraped at
once, and each request goes to either. Meanwhile, as in production, the meter stores usage, the
collector scrapes every `--scrape` s, the attribution job runs every 5 s and the calibration job
every 15 s. After the load it prints each account's energy against the simulator's ground
truth, the per-request error percentiles, the idle share, and each backend's fitted model next
to the simulator's true terms. With `--train-mix M --train-seconds T` the backends are first
calibrated on T seconds of mix M, then the calibration stays as it is while `--mix` is scored
(a model fitted on one hour's traffic pricing another's). With `--runs N` it does all that N
times over (the same workload and seeds: what changes is only how the run unfolds in time) and
ends with each account's error in every run and the spread.

Cost: `--records` synthetic usage records on four backends (64 requests in flight each, 5 s
intervals) are written to PostgreSQL, then the calibration and attribution jobs are timed over
them and the figures are scaled to a million requests. The synthetic rows are deleted after.
"""

import argparse
import asyncio
import csv
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import django
import orjson

from bench.overhead import _machine, _spawn, _wait_ready
from bench.ports import free_port

WORDS = (  # noqa: SIM905 -- reads better as prose
    "energy token watt batch prefill decode gateway backend tensor kernel memory cluster "
    "the of and to in is that for it as was with be by on not this are or from at which"
).split()
JOB_SECONDS = {"attribute": 5.0, "calibrate": 15.0}


@dataclass
class Kind:
    """A kind of request: prompt words and output tokens (ranges), share streamed."""

    prompt: tuple[int, int]
    output: tuple[int, int]
    stream: float
    system_words: int = 0


KINDS = {
    "chat": Kind((20, 150), (20, 200), 0.5),
    "essay": Kind((500, 900), (200, 600), 0.3),
    "long prompt": Kind((2000, 6000), (16, 128), 0.3),
    "reasoning": Kind((30, 120), (1000, 4000), 0.5),
    "agent": Kind((100, 1500), (50, 1000), 0.5, system_words=1500),
}
# Traffic mixes: each kind's arrivals are its accounts' shares times the mix's weight.
MIXES = {
    "default": {},
    "chat-heavy": {"chat": 3.0, "long prompt": 0.25},
    "long-prompt-heavy": {"long prompt": 4.0, "chat": 0.5},
}
# The second backend of --backends 2: a larger model on the same GPUs (simulator pace flags).
LARGER_MODEL = [
    "--prefill-tokens-per-s", "4000", "--prefill-base-ms", "25",
    "--decode-base-ms", "20", "--decode-per-seq-ms", "0.24",
]  # fmt: skip
# (tier, kind, share of the arrivals) per account.
ACCOUNTS = [
    ("free", "chat", 0.14),
    ("free", "chat", 0.10),
    ("free", "essay", 0.05),
    ("free", "essay", 0.04),
    ("interactive", "chat", 0.16),
    ("interactive", "chat", 0.12),
    ("interactive", "long prompt", 0.08),
    ("interactive", "long prompt", 0.06),
    ("premium", "reasoning", 0.05),
    ("premium", "reasoning", 0.04),
    ("premium", "agent", 0.09),
    ("premium", "agent", 0.07),
]


@dataclass
class Account:
    tier: str
    kind: str
    share: float
    key: str = ""
    system: str = ""
    sent: list[tuple[str, int]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.tier}/{self.kind}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second")
    parser.add_argument("--speedup", type=float, default=20.0)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--scrape", type=float, default=0.5, help="seconds between scrapes")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=1, help="accuracy runs, then their spread")
    parser.add_argument("--backends", type=int, choices=(1, 2), default=1)
    parser.add_argument("--mix", choices=sorted(MIXES), default="default")
    parser.add_argument("--train-mix", choices=sorted(MIXES), help="calibrate on this first")
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument(
        "--requests-csv", help="append each request's truth and attribution, run by run, here"
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_PROFILE", "local")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    print(_machine())
    if not args.skip_accuracy:
        runs = [_accuracy(args) for _ in range(args.runs)]
        if len(runs) > 1:
            _spread(runs)
    if not args.skip_cost:
        _cost(args.records)


# Accuracy ----------------------------------------------------------------------------------


def _accuracy(args: argparse.Namespace) -> "Run":
    from fleet.models import Backend
    from metering.models import EnergyCalibration, EnergyInterval, GpuSample, UsageRecord

    name = f"bench-energy-{uuid.uuid4().hex[:6]}"
    names = [name, f"{name}-larger"][: args.backends]
    started = datetime.now(UTC)
    ports = {backend: free_port() for backend in names}
    gateway_port = free_port()
    env = {**os.environ, "LOG_LEVEL": "ERROR"}
    simulators = []
    for n, backend in enumerate(names):
        sim_args = ["--port", str(ports[backend]), "--name", backend, "--model", backend]
        sim_args += ["--seed", "3", "--speedup", str(args.speedup), "--gpus", str(args.gpus)]
        sim_args += LARGER_MODEL if n else []
        simulators.append(_spawn(["1"], [sys.executable, "-m", "simulator", *sim_args], env))
    gateway_args = ["config.asgi:application", "--port", str(gateway_port), "--no-access-log"]
    gateway = _spawn(["0"], [sys.executable, "-m", "uvicorn", *gateway_args], env)
    stop, frozen = threading.Event(), threading.Event()
    base = f"http://127.0.0.1:{gateway_port}"
    try:
        for backend in names:
            _wait_ready(f"http://127.0.0.1:{ports[backend]}/health")
        _wait_ready(f"{base}/readyz")
        accounts = _prepare(ports)
        workers = [
            threading.Thread(target=target, args=(stop, *extra), daemon=True)
            for target, extra in (
                (_meter, ()),
                (_scraper, (names, args.scrape)),
                (_jobs, (frozen,)),
            )
        ]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        setup = f"{args.gpus} GPUs a backend at speedup {args.speedup:g}"
        setup += f"; scrapes every {args.scrape:g} s"
        if args.train_mix:
            train = f"mix {args.train_mix}, {args.rate:g} req/s for {args.train_seconds:g} s"
            print(f"\ntraining: {train}")
            asyncio.run(
                _offer(base, names, accounts, args.rate, args.train_seconds, args.train_mix)
            )
            _freeze(names, frozen, args.scrape)
            for account in accounts:  # only what the frozen models price is scored
                account.sent.clear()
        print(f"\nworkload: mix {args.mix}, {args.rate:g} req/s for {args.seconds:g} s; {setup}")
        asyncio.run(_offer(base, names, accounts, args.rate, args.seconds, args.mix))
        time.sleep(2 * args.scrape + 1.0)
        stop.set()
        for worker in workers:
            worker.join()
        truth = _truth(list(ports.values()))
    finally:
        stop.set()
        for process in (gateway, *simulators):
            process.terminate()
        for process in (gateway, *simulators):
            process.wait(10)
    _final_jobs(names)
    intervals = list(EnergyInterval.objects.filter(backend__in=names))
    records = {
        f"req_{r.request_id.hex}": r
        for r in UsageRecord.objects.filter(backend__in=names, started_at__gte=started)
    }
    for n, backend in enumerate(names):
        calibration = EnergyCalibration.objects.filter(backend=backend).latest()
        _model(calibration, args, larger=n > 0)
    run = _report(accounts, intervals, records, truth)
    if args.requests_csv:
        _requests_csv(args.requests_csv, name, accounts, records, truth)
    # The usage stays, as any usage does; the energy rows would only be refitted for an hour.
    Backend.objects.filter(name__in=names).update(enabled=False)
    for table in (EnergyInterval, GpuSample, EnergyCalibration):
        table.objects.filter(backend__in=names).delete()
    return run


def _freeze(names: list[str], frozen: threading.Event, scrape: float) -> None:
    """Fit each backend on what it has served so far and keep that model from now on."""
    from metering.attribution import CalibrationPolicy, energy_calibrate
    from metering.consumer import Meter

    frozen.set()
    time.sleep(2 * scrape + 1.0)  # the last scrapes, and the meter's last records
    for meter in Meter.from_settings():
        meter.drain()
    policy = CalibrationPolicy.from_settings()
    now = datetime.now(UTC)
    for backend in names:
        # Fitted on the training traffic however precise it is: that is what is tested.
        fitted = energy_calibrate(
            backend=backend, now=now, until=now, policy=replace(policy, price_error=None)
        )
        print(f"  {backend}: " + ("calibrated on the training traffic" if fitted else "no fit"))


def _prepare(ports: dict[str, int]) -> list[Account]:
    from customers.models import LimitOverride
    from customers.services import account_create, api_key_issue, tiers_ensure_defaults
    from fleet.services import backend_register

    tiers_ensure_defaults()
    for backend, port in ports.items():
        url = f"http://127.0.0.1:{port}"
        backend_register(
            name=backend,
            base_url=url,
            upstream_model=backend,
            public_models=[backend],
            telemetry_url=url + "/dcgm/metrics",
            supports_priority=True,
        )
    name = next(iter(ports))
    rng = random.Random(5)
    accounts = []
    for tier, kind, share in ACCOUNTS:
        account = account_create(name=f"{name}-{tier}-{uuid.uuid4().hex[:4]}", tier_slug=tier)
        # Rates and quotas out of the way: this measures energy, not limits.
        LimitOverride.objects.create(
            account=account,
            requests_per_minute=10**6,
            tokens_per_minute=10**9,
            tokens_per_day=10**12,
            tokens_per_month=10**12,
            max_concurrent_requests=10**4,
            max_tokens_per_request=8192,
        )
        system = " ".join(rng.choices(WORDS, k=KINDS[kind].system_words))
        key = api_key_issue(account=account).plaintext
        accounts.append(Account(tier, kind, share, key=key, system=system))
    time.sleep(3.0)  # gateways re-read backends and keys every few seconds
    return accounts


async def _offer(
    base: str, models: list[str], accounts: list[Account], rate: float, seconds: float, mix: str
) -> None:
    """Open loop: Poisson arrivals at `rate`, each from an account drawn by its share in the
    mix, to one of the models."""
    rng = random.Random(11)
    weights = [a.share * MIXES[mix].get(a.kind, 1.0) for a in accounts]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=300)
    ) as session:
        tasks = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            account = rng.choices(accounts, weights)[0]
            body = _body(rng.choice(models), account, rng)
            tasks.append(asyncio.create_task(_one(session, base, account, body)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)


def _body(model: str, account: Account, rng: random.Random) -> bytes:
    kind = KINDS[account.kind]
    messages = [
        {"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(*kind.prompt)))}
    ]
    if account.system:
        messages.insert(0, {"role": "system", "content": account.system})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": rng.randint(*kind.output),
        "ignore_eos": True,  # the mix's output lengths, not the simulator's own
    }
    if rng.random() < kind.stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return orjson.dumps(body)


async def _one(session: aiohttp.ClientSession, base: str, account: Account, body: bytes) -> None:
    headers = {"authorization": f"Bearer {account.key}", "content-type": "application/json"}
    async with session.post(base + "/v1/chat/completions", data=body, headers=headers) as reply:
        await reply.read()
        account.sent.append((reply.headers["x-request-id"], reply.status))


def _meter(stop: threading.Event) -> None:
    from django.db import connection

    from metering.consumer import Meter

    try:
        (meter,) = Meter.from_settings()  # one shard: bench.energy runs on one Redis
        meter.run(stop)
    finally:
        connection.close()


def _scraper(stop: threading.Event, names: list[str], every: float) -> None:
    from django.db import connection

    from metering.telemetry import telemetry_scrape

    try:
        # At once: the first interval starts at the first scrape, before the load does.
        telemetry_scrape(timeout=2.0, min_gap=0, names=names)
        while not stop.wait(every):
            telemetry_scrape(timeout=2.0, min_gap=every / 2, names=names)
        telemetry_scrape(timeout=2.0, min_gap=0, names=names)
    finally:
        connection.close()


def _jobs(stop: threading.Event, frozen: threading.Event) -> None:
    """The attribution and calibration jobs on their beat schedule (shortened); calibration
    stops once `frozen` is set."""
    from django.db import connection

    from metering.attribution import energy_attribute_ready, energy_calibrate_ready

    due = {job: time.monotonic() + every for job, every in JOB_SECONDS.items()}
    try:
        while not stop.wait(0.5):
            now = time.monotonic()
            if now >= due["calibrate"] and not frozen.is_set():
                energy_calibrate_ready()
                due["calibrate"] = now + JOB_SECONDS["calibrate"]
            if now >= due["attribute"]:
                energy_attribute_ready()
                due["attribute"] = now + JOB_SECONDS["attribute"]
    finally:
        connection.close()


def _final_jobs(names: list[str]) -> None:
    """Once the gateway is gone: store what is left, attribute the last intervals.

    A backend still without a calibration is one whose prices the run could not pin to 2%
    (a new backend waits for that, or an hour): it is fitted on the whole run, as it would be
    after its hour, so that its intervals are attributed and the run is scored whole.
    """
    from metering.attribution import (
        CalibrationPolicy,
        energy_attribute_ready,
        energy_calibrate,
        energy_calibration_latest,
    )
    from metering.consumer import Meter

    for meter in Meter.from_settings():
        meter.drain()
    policy = replace(CalibrationPolicy.from_settings(), price_error=None)
    now = datetime.now(UTC)
    for backend in names:
        if energy_calibration_latest(backend=backend) is None:
            print(f"\n{backend}: no fit within 2% during the run; fitted on the whole run")
            energy_calibrate(backend=backend, now=now, until=now, policy=policy)
    energy_attribute_ready()


def _truth(ports: list[int]) -> dict[str, Any]:
    """Every simulator's ground truth: the energy of each request, by its id."""
    import urllib.request

    requests: dict[str, float] = {}
    for port in ports:
        url = f"http://127.0.0.1:{port}/_sim/energy"
        with urllib.request.urlopen(url, timeout=30) as response:
            requests |= orjson.loads(response.read())["requests"]
    return {"requests": requests}


def _model(c: Any, args: argparse.Namespace, *, larger: bool) -> None:
    """A backend's fitted model next to the simulator's true terms (simulator/power.py)."""
    from metering.attribution import Coefficients
    from simulator.__main__ import parse_args
    from simulator.power import PowerModel

    timing = parse_args(LARGER_MODEL if larger else []).timing
    power, gpus, speedup = PowerModel(), args.gpus, args.speedup

    def decode_watts(n: int) -> float:
        """The fitted model's power while n sequences decode: its curve, plus a token's
        joules (if any) times the tokens they make a second at the simulator's pace."""
        tokens_per_s = n * speedup / timing.decode_seconds(n)
        model = Coefficients.of(c)
        return float(model.decode_power(n) + c.decode_j_per_token * tokens_per_s)

    print(
        f"\n{c.backend} ({c.source}, {c.intervals} intervals, R^2 {c.r_squared or 0:.4f})\n"
        "| term | fitted | simulator's truth |\n|---|---|---|\n"
        f"| idle power | {c.idle_watts:,.0f} W | {power.idle_w * gpus * speedup:,.0f} W |\n"
        f"| a prompt token | {c.prefill_j_per_token:.4f} J | "
        f"{power.max_w * gpus / timing.prefill_tokens_per_s:.4f} J |\n"
        f"| a prefill pass | {c.prefill_j_per_request:.1f} J | "
        f"{power.max_w * gpus * timing.prefill_base_s:.1f} J |\n"
        f"| a pass's time | {1000 * c.prefill_seconds:.3f} ms | "
        f"{1000 * timing.prefill_base_s / speedup:.3f} ms |\n"
        f"| a prompt token's time | {1e6 * c.ttft_seconds_per_token:.3f} µs | "
        f"{1e6 / timing.prefill_tokens_per_s / speedup:.3f} µs |\n"
        f"| a decode step over 8 sequences | "
        f"{1000 * (c.decode_step_seconds + 8 * c.decode_step_seconds_per_sequence):.3f} ms | "
        f"{1000 * timing.decode_seconds(8) / speedup:.3f} ms |\n"
        + "".join(
            f"| decoding {n} sequences | {decode_watts(n):,.0f} W | "
            f"{power.decode_watts(n) * gpus * speedup:,.0f} W |\n"
            for n in (1, 2, 4, 8, 12, 16, 32)
        )
    )


@dataclass
class Run:
    """One accuracy run's figures: each account's error (%, by label) and the per-request
    |error| percentiles."""

    accounts: dict[str, float]
    p50: float
    p90: float
    p99: float


def _report(
    accounts: list[Account],
    intervals: list[Any],
    records: dict[str, Any],
    truth: dict[str, Any],
) -> Run:
    measured = sum(i.energy_j for i in intervals)
    idle = sum(i.idle_j or 0 for i in intervals)
    attributed = sum(i.attributed_j or 0 for i in intervals)
    pending = sum(1 for i in intervals if i.attributed_at is None)
    on_records = sum(r.energy_joules or 0 for r in records.values())
    print(
        f"\n{len(records)} requests stored, {len(intervals)} intervals ({pending} pending); "
        f"measured {measured / 1000:.1f} kJ = attributed {attributed / 1000:.1f} kJ + idle "
        f"{idle / 1000:.1f} kJ ({100 * idle / measured:.1f}% idle); records carry "
        f"{on_records / 1000:.1f} kJ"
    )
    print("\n| account | requests | truth (kJ) | attributed (kJ) | error |\n|---|---|---|---|---|")
    worst, errors = 0.0, []
    by_backend: dict[str, list[float]] = defaultdict(list)
    by_label: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    by_account: dict[str, float] = {}
    for account in accounts:
        ids = [rid for rid, status in account.sent if status == 200 and rid in records]
        true_j = sum(truth["requests"].get(rid, 0.0) for rid in ids)
        got_j = sum(records[rid].energy_joules or 0 for rid in ids)
        error = 100 * (got_j - true_j) / true_j
        worst = max(worst, abs(error))
        kj = f"{true_j / 1000:.1f} | {got_j / 1000:.1f}"
        print(f"| {account.label} | {len(ids)} | {kj} | {error:+.2f}% |")
        label = account.label
        while label in by_account:  # two accounts of each tier and kind
            label += "'"
        by_account[label] = error
        for rid in ids:
            if truth["requests"].get(rid):
                t = truth["requests"][rid]
                errors.append(abs(100 * ((records[rid].energy_joules or 0) - t) / t))
                by_backend[records[rid].backend].append(errors[-1])
        totals = by_label[account.kind]
        totals[0] += len(ids)
        totals[1] += true_j
        totals[2] += got_j
    cuts = statistics.quantiles(errors, n=100)
    print(
        f"\nworst account {worst:.2f}%; per request |error| p50 {cuts[49]:.1f}% p90 "
        f"{cuts[89]:.1f}% p99 {cuts[98]:.1f}% (n={len(errors)})"
    )
    for kind, (n, true_j, got_j) in by_label.items():
        print(f"  {kind:12} {int(n):5} requests {100 * (got_j - true_j) / true_j:+6.2f}%")
    if len(by_backend) > 1:
        for backend, backend_errors in sorted(by_backend.items()):
            p90 = statistics.quantiles(backend_errors, n=10)[8]
            print(f"  {backend}: per request p90 {p90:.1f}% (n={len(backend_errors)})")
    return Run(by_account, cuts[49], cuts[89], cuts[98])


def _requests_csv(
    path: str, run: str, accounts: list[Account], records: dict[str, Any], truth: dict[str, Any]
) -> None:
    """Each scored request's figures against the simulator's truth, for a closer look."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as out:
        writer = csv.writer(out)
        if new:
            writer.writerow(
                ["run", "account", "backend", "streamed", "prompt", "cached", "completion",
                 "queue_ms", "ttft_ms", "latency_ms", "truth_j", "attributed_j"]
            )  # fmt: skip
        for account in accounts:
            for rid, status in account.sent:
                r, true_j = records.get(rid), truth["requests"].get(rid)
                if status != 200 or r is None or not true_j:
                    continue
                writer.writerow(
                    [run, account.label, r.backend, r.streamed, r.prompt_tokens,
                     r.cached_prompt_tokens, r.completion_tokens, r.queue_wait_ms, r.ttft_ms,
                     r.latency_ms, true_j, r.energy_joules or 0]
                )  # fmt: skip


def _spread(runs: list[Run]) -> None:
    """Each account's error in every run, and how far they spread."""
    print(f"\n{len(runs)} runs: each account's error, run by run\n")
    heads = " | ".join(f"run {i}" for i in range(1, len(runs) + 1))
    print(f"| account | {heads} | spread | worst |\n|---|{'---|' * (len(runs) + 2)}")
    for label in runs[0].accounts:
        errors = [run.accounts[label] for run in runs]
        cells = " | ".join(f"{e:+.2f}%" for e in errors)
        spread = max(errors) - min(errors)
        print(f"| {label} | {cells} | {spread:.2f} | {max(map(abs, errors)):.2f}% |")
    worst = [max(map(abs, run.accounts.values())) for run in runs]
    within = [sum(abs(e) <= 2.0 for e in run.accounts.values()) for run in runs]
    print(f"| worst account | {' | '.join(f'{w:.2f}%' for w in worst)} | | {max(worst):.2f}% |")
    total = len(runs[0].accounts)
    cells = " | ".join(f"{n}/{total}" for n in within)
    print(f"| accounts within 2% | {cells} | | |")
    for name in ("p50", "p90", "p99"):
        values = [getattr(run, name) for run in runs]
        cells = " | ".join(f"{v:.1f}%" for v in values)
        print(f"| per request {name} | {cells} | | {max(values):.1f}% |")


# Cost --------------------------------------------------------------------------------------

BACKENDS = 4
IN_FLIGHT = 64
INTERVAL_S = 5.0


def _cost(records: int) -> None:
    from metering.attribution import (
        CalibrationPolicy,
        Coefficients,
        energy_attribute,
        energy_calibrate,
        energy_calibration_configure,
    )
    from metering.models import EnergyCalibration, EnergyInterval, UsageRecord

    names = [f"bench-cost-{uuid.uuid4().hex[:6]}-{n}" for n in range(BACKENDS)]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
    print(f"\njob cost: {records:,} synthetic usage records on {BACKENDS} backends")
    began = time.perf_counter()
    spans = [_synthetic(name, start, records // BACKENDS, seed=n) for n, name in enumerate(names)]
    print(f"  written in {time.perf_counter() - began:.1f} s (COPY, as the meter does)")
    end = max(spans)
    try:
        policy = CalibrationPolicy(lookback=timedelta(hours=1), max_lag=timedelta(hours=6))
        began = time.perf_counter()
        fitted = [energy_calibrate(backend=n, now=end, until=end, policy=policy) for n in names]
        calibrate_s = time.perf_counter() - began
        in_hour = UsageRecord.objects.filter(
            backend__in=names, started_at__gte=end - policy.lookback
        ).count()
        for name, calibration in zip(names, fitted, strict=True):
            if calibration is None:  # the synthetic energy is rough; attribution needs a model
                model = Coefficients(220.0, 0.07, 10.0, (300.0,), decode_j_per_token=0.3)
                energy_calibration_configure(backend=name, coefficients=model, now=end)
        began = time.perf_counter()
        done = energy_attribute(horizons={}, now=end + timedelta(minutes=1), max_lag=policy.max_lag)
        attribute_s = time.perf_counter() - began
        print(
            f"  calibration: {calibrate_s:.2f} s for {BACKENDS} backends over the last hour "
            f"({in_hour:,} records) = {calibrate_s / in_hour * 1e6:.1f} s per million "
            f"records fitted"
        )
        print(
            f"  attribution: {attribute_s:.2f} s for {done.intervals:,} intervals and "
            f"{done.requests:,} records = {attribute_s / done.requests * 1e6:.1f} s per million "
            f"requests ({done.requests / attribute_s:,.0f} records/s, "
            f"{done.intervals / attribute_s:,.0f} intervals/s)"
        )
    finally:
        UsageRecord.objects.filter(backend__in=names, started_at__gte=start).delete()
        EnergyInterval.objects.filter(backend__in=names).delete()
        EnergyCalibration.objects.filter(backend__in=names).delete()


def _synthetic(name: str, start: datetime, count: int, seed: int) -> datetime:
    """One backend's records (~IN_FLIGHT at a time) and its intervals; returns their end."""
    from metering.models import EnergyInterval
    from metering.services import usage_records_write

    rng = random.Random(seed)
    mean_s = 8.0
    rate = IN_FLIGHT / mean_s
    t, rows = 0.0, []
    work: dict[int, float] = defaultdict(float)
    for _ in range(count):
        t += rng.expovariate(rate)
        prompt, output = rng.randint(20, 4000), rng.randint(10, 800)
        ttft, latency = 0.02 + prompt / 40_000, rng.uniform(0.5, 2 * mean_s)
        row = {
            "request_id": uuid.uuid4(),
            "account_id": rng.randint(1, 500),
            "api_key_id": 1,
            "tier": rng.choice(("free", "interactive", "premium")),
            "model": "bench",
            "backend": name,
            "endpoint": "chat.completions",
            "prompt_tokens": prompt,
            "cached_prompt_tokens": 0,
            "completion_tokens": output,
            "reasoning_tokens": 0,
            "tokens_estimated": False,
            "queue_wait_ms": 0.0,
            "ttft_ms": 1000 * ttft,
            "latency_ms": 1000 * (ttft + latency),
            "status_code": 200,
            "outcome": "ok",
            "streamed": True,
            "started_at": start + timedelta(seconds=t),
            "ended_at": start + timedelta(seconds=t + ttft + latency),
            "energy_joules": None,
        }
        rows.append(row)
        # Rough energy for the interval it mostly ran in: enough for a fit to exist.
        work[int((t + latency / 2) // INTERVAL_S)] += 0.07 * prompt + 0.4 * output
        if len(rows) == 5000:
            usage_records_write(records=rows)
            rows = []
    usage_records_write(records=rows)
    slices = int(t // INTERVAL_S) + 2
    EnergyInterval.objects.bulk_create(
        EnergyInterval(
            backend=name,
            started_at=start + timedelta(seconds=n * INTERVAL_S),
            ended_at=start + timedelta(seconds=(n + 1) * INTERVAL_S),
            energy_j=220 * INTERVAL_S + work[n] + 50 * rng.random(),
            gpus=2,
        )
        for n in range(slices)
    )
    return start + timedelta(seconds=slices * INTERVAL_S)


if __name__ == "__main__":
    main()
