"""Gateway overhead: the same load sent straight to a simulated backend, through a bare proxy
and through the gateway.

    python -m bench.overhead [--runs 3] [--seconds 5] [--concurrency 1 16 64] [--workers 1]
                             [--paced TTFT_MS ITL_MS]

Needs this machine's PostgreSQL and Redis (DATABASE_URL / REDIS_URL, defaults as in settings)
and `hey` (apt-get install hey) as the load generator. The gateway runs with auth, validation,
routing and metering all on, pinned to CPU 0 (CPUs 0 to N-1 with --workers N); the bare proxy
(bench/bare_proxy.py: the same uvicorn and aiohttp, and nothing else) is pinned there too, idle
while the gateway is measured and the other way round; the simulator, the meter and `hey` share
CPU 1. Each run measures the three targets one after the other (direct, bare, gateway), so that
drift on the machine falls on all three alike.

Prints requests/s and p50/p99 latency for each target, the added p50/p99 of the gateway and
the bare proxy (their latency minus the direct one), the gateway's requests/s and added p50 as
ratios to the bare proxy's, the gateway's requests/s as a ratio to the backend's own, and the
CPU time each proxy's processes spent per request served (medians over the runs).

With --paced the backend keeps a fixed pace (each prefill pass TTFT_MS, each decode pass ITL_MS,
as `python -m simulator --paced`) instead of answering at once: what matters there is how much
of the backend's throughput survives the proxy, and a third mode, "first" (one completion token,
not streamed), whose added p50 is the time to first token that the proxy adds.
"""

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import django
import psutil

from bench.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-model"


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    # Non-200 answers by status, to tell what went wrong.
    statuses: Counter[str]
    requests: int = 0
    # CPU seconds (user + system) the proxy's processes spent in the run; 0 for no proxy.
    cpu_seconds: float = 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6 if self.requests else 0.0


@dataclass
class Target:
    """Where a load is sent: the backend itself or a proxy, whose CPU time is measured."""

    base: str
    key: str | None = None
    process: psutil.Process | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--paced",
        nargs=2,
        type=float,
        metavar=("TTFT_MS", "ITL_MS"),
        help="a backend of fixed pace instead of an instant one",
    )
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("bench needs `hey` as its load generator: apt-get install hey")

    os.environ.setdefault("TF_PROFILE", "local")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    key = _prepare_fleet(sim_port := free_port())
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    gateway_port, bare_port = free_port(), free_port()
    simulator = _spawn(["1"], _simulator(sim_port, args.paced), env)
    # One core per worker, from CPU 0 up; beyond one they share cores with the load.
    proxy_cpus = [str(cpu) for cpu in range(min(args.workers, os.cpu_count() or 1))]
    gateway_server = _spawn(
        proxy_cpus, _uvicorn("config.asgi:application", gateway_port, args.workers), env
    )
    meter = _spawn(["1"], [sys.executable, "manage.py", "meter"], env)
    bare_env = {**env, "BARE_BACKEND": f"http://127.0.0.1:{sim_port}"}
    bare_server = _spawn(
        proxy_cpus, _uvicorn("bench.bare_proxy:app", bare_port, args.workers), bare_env
    )
    children = [simulator, gateway_server, meter, bare_server]
    try:
        _wait_ready(f"http://127.0.0.1:{sim_port}/health")
        _wait_ready(f"http://127.0.0.1:{gateway_port}/readyz")
        _wait_ready(f"http://127.0.0.1:{bare_port}/health")
        direct = Target(f"http://127.0.0.1:{sim_port}")
        gateway = Target(
            f"http://127.0.0.1:{gateway_port}", key, psutil.Process(gateway_server.pid)
        )
        bare = Target(f"http://127.0.0.1:{bare_port}", None, psutil.Process(bare_server.pid))
        print(_machine())
        pace = "instant" if not args.paced else "TTFT {:g} ms, {:g} ms a token".format(*args.paced)
        print(
            f"gateway workers: {args.workers}; {args.runs} runs of {args.seconds}s each; "
            f"{args.tokens} completion tokens per request; backend: {pace}\n"
        )
        modes = [
            ("whole", _body(False, args.tokens), args.concurrency),
            ("stream", _body(True, args.tokens), args.concurrency),
        ]
        if args.paced:
            modes.append(("first", _body(False, 1), [1]))
        _print_header()
        for mode, body, concurrencies in modes:
            for concurrency in concurrencies:
                runs = _measure([direct, bare, gateway], body, concurrency, args)
                _print_row(mode, concurrency, *runs)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(10)


def _prepare_fleet(sim_port: int) -> str:
    from django.core.management import call_command

    from customers.models import LimitOverride
    from customers.services import account_create, api_key_issue, tiers_ensure_defaults
    from fleet.services import backend_register

    call_command("migrate", verbosity=0)
    tiers_ensure_defaults()
    backend_register(
        name="bench-sim",
        base_url=f"http://127.0.0.1:{sim_port}",
        upstream_model=MODEL,
        public_models=[MODEL],
        max_concurrent_sequences=1024,
    )
    account = account_create(name=f"bench-{uuid.uuid4().hex[:8]}", tier_slug="premium")
    # Every limit is checked on every request, and none is ever reached.
    huge = 10**12
    LimitOverride.objects.create(
        account=account,
        requests_per_minute=2**31 - 1,
        tokens_per_minute=huge,
        tokens_per_day=huge,
        tokens_per_month=huge,
        max_concurrent_requests=100_000,
    )
    return api_key_issue(account=account, name="bench").plaintext


def _body(stream: bool, tokens: int) -> str:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Explain the token factory in one paragraph."}],
        "max_tokens": tokens,
        "ignore_eos": True,  # the same answer length in every run
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body)


def _measure(
    targets: list[Target], body: str, concurrency: int, args: argparse.Namespace
) -> list[list[Run]]:
    """Each target's runs, taken in turn within each run; one warm-up each first."""
    for target in targets:
        _hey(target, body, concurrency, ["-z", "1s"])
    runs: list[list[Run]] = [[] for _ in targets]
    for _ in range(args.runs):
        for target, taken in zip(targets, runs, strict=True):
            taken.append(_hey(target, body, concurrency, ["-z", f"{args.seconds}s"]))
    return runs


def _hey(target: Target, body: str, concurrency: int, amount: list[str]) -> Run:
    url = target.base + "/v1/chat/completions"
    with tempfile.NamedTemporaryFile("w", suffix=".json") as body_file:
        body_file.write(body)
        body_file.flush()
        command = [
            "taskset",
            "-c",
            "1",
            "hey",
            *amount,
            "-c",
            str(concurrency),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            body_file.name,
            "-o",
            "csv",
        ]
        if target.key:
            command += ["-H", f"Authorization: Bearer {target.key}"]
        cpu_before = _cpu_seconds(target.process)
        output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
        cpu = _cpu_seconds(target.process) - cpu_before
    rows = list(csv.DictReader(io.StringIO(output)))
    times = sorted(float(row["response-time"]) * 1000 for row in rows)
    span = max(float(row["offset"]) + float(row["response-time"]) for row in rows)
    return Run(
        rps=len(rows) / span,
        p50_ms=_percentile(times, 50),
        p99_ms=_percentile(times, 99),
        errors=sum(row["status-code"] != "200" for row in rows),
        statuses=Counter(row["status-code"] for row in rows if row["status-code"] != "200"),
        requests=len(rows),
        cpu_seconds=cpu,
    )


def _cpu_seconds(process: psutil.Process | None) -> float:
    """User and system CPU time of the process and its workers (uvicorn --workers > 1)."""
    if process is None:
        return 0.0
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        times = each.cpu_times()
        total += times.user + times.system
    return total


def _percentile(values: list[float], pct: float) -> float:
    return values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))]


def _print_header() -> None:
    print(
        f"{'mode':<7}{'conc':>5} | {'direct rps':>10} {'p50':>7} {'p99':>7} | "
        f"{'gateway rps':>11} {'p50':>7} {'p99':>7} | {'added p50':>9} {'added p99':>9} | "
        f"{'bare rps':>8} {'p50':>7} {'p99':>7} {'added p50':>9} | "
        f"{'rps/bare':>8} {'add50/bare':>10} {'rps/direct':>10} | "
        f"{'cpu us/req gw':>13} {'bare':>6} {'errors':>6}"
    )


def _print_row(
    mode: str, concurrency: int, direct: list[Run], bare: list[Run], through: list[Run]
) -> None:
    def med(runs: list[Run], field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in runs))

    def added(runs: list[Run], field: str) -> float:
        pairs = zip(direct, runs, strict=True)
        return float(statistics.median(getattr(t, field) - getattr(d, field) for d, t in pairs))

    added50, added99, bare50 = (
        added(through, "p50_ms"),
        added(through, "p99_ms"),
        added(bare, "p50_ms"),
    )
    errors = sum(run.errors for run in direct + bare + through)
    statuses = sum((run.statuses for run in direct + bare + through), Counter[str]())
    print(
        f"{mode:<7}{concurrency:>5} | {med(direct, 'rps'):>10.0f} {med(direct, 'p50_ms'):>7.2f}"
        f" {med(direct, 'p99_ms'):>7.2f} | {med(through, 'rps'):>11.0f}"
        f" {med(through, 'p50_ms'):>7.2f} {med(through, 'p99_ms'):>7.2f} |"
        f" {added50:>9.2f} {added99:>9.2f} | {med(bare, 'rps'):>8.0f}"
        f" {med(bare, 'p50_ms'):>7.2f} {med(bare, 'p99_ms'):>7.2f} {bare50:>9.2f} |"
        f" {med(through, 'rps') / med(bare, 'rps'):>8.2f} {_ratio(added50, bare50):>10}"
        f" {med(through, 'rps') / med(direct, 'rps'):>10.3f} |"
        f" {med(through, 'cpu_us_per_request'):>13.0f} {med(bare, 'cpu_us_per_request'):>6.0f}"
        f" {errors:>6} {dict(statuses) if statuses else ''}",
        flush=True,
    )


def _ratio(value: float, base: float) -> str:
    """value / base, or a dash where the base is too small to divide by (hey's timer is 0.1 ms)."""
    return f"{value / base:.2f}" if base >= 0.05 else "-"


def _simulator(port: int, paced: list[float] | None = None) -> list[str]:
    """The simulated backend serving MODEL on `port`: instant, or at a fixed pace (TTFT_MS,
    ITL_MS)."""
    return [
        sys.executable,
        "-m",
        "simulator",
        "--port",
        str(port),
        "--model",
        MODEL,
        *(["--paced", *map(str, paced)] if paced else ["--speedup", "0"]),
        "--max-num-seqs",
        "1024",
    ]


def _uvicorn(app: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--lifespan",
        "on",
    ]


def _spawn(cpus: list[str], command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", ",".join(cpus), *command], cwd=ROOT, env=env)


def _wait_ready(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} not ready after {timeout}s")


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"machine: {os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}"


if __name__ == "__main__":
    main()
