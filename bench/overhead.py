"""Gateway overhead: the same load sent straight to a simulated backend and through the gateway.

    python -m bench.overhead [--runs 3] [--seconds 5] [--concurrency 1 16 64] [--workers 1]

Needs this machine's PostgreSQL and Redis (DATABASE_URL / REDIS_URL, defaults as in settings)
and `hey` (apt-get install hey) as the load generator. The gateway runs with auth, validation,
routing and metering all on, pinned to CPU 0; the simulator (instant mode), the meter and
`hey` share CPU 1. Prints requests/s and p50/p99 latency for each target, and the gateway's
added p50/p99 (medians over the runs).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("bench needs `hey` as its load generator: apt-get install hey")

    os.environ.setdefault("TF_PROFILE", "local")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    key = _prepare_fleet(sim_port := _free_port())
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    gateway_port = _free_port()
    children = [
        _spawn(
            ["1"],
            [
                sys.executable,
                "-m",
                "simulator",
                "--port",
                str(sim_port),
                "--model",
                MODEL,
                "--speedup",
                "0",
                "--max-num-seqs",
                "1024",
            ],
            env,
        ),
        _spawn(
            ["0"],
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--port",
                str(gateway_port),
                "--workers",
                str(args.workers),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--lifespan",
                "on",
            ],
            env,
        ),
        _spawn(["1"], [sys.executable, "manage.py", "meter"], env),
    ]
    try:
        _wait_ready(f"http://127.0.0.1:{sim_port}/health")
        _wait_ready(f"http://127.0.0.1:{gateway_port}/readyz")
        print(_machine())
        print(
            f"gateway workers: {args.workers}; {args.runs} runs of {args.seconds}s each; "
            f"{args.tokens} completion tokens per request\n"
        )
        print(
            f"{'mode':<7}{'conc':>5} | {'direct rps':>10} {'p50':>7} {'p99':>7} | "
            f"{'gateway rps':>11} {'p50':>7} {'p99':>7} | {'added p50':>9} {'added p99':>9}"
            f" {'errors':>6}"
        )
        for stream in (False, True):
            body = _body(stream, args.tokens)
            for concurrency in args.concurrency:
                direct = _measure(f"http://127.0.0.1:{sim_port}", None, body, concurrency, args)
                through = _measure(f"http://127.0.0.1:{gateway_port}", key, body, concurrency, args)
                _print_row("stream" if stream else "whole", concurrency, direct, through)
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
    base: str, key: str | None, body: str, concurrency: int, args: argparse.Namespace
) -> list[Run]:
    url = base + "/v1/chat/completions"
    _hey(url, key, body, concurrency, ["-n", str(max(200, concurrency * 10))])  # warm up
    return [_hey(url, key, body, concurrency, ["-z", f"{args.seconds}s"]) for _ in range(args.runs)]


def _hey(url: str, key: str | None, body: str, concurrency: int, amount: list[str]) -> Run:
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
        if key:
            command += ["-H", f"Authorization: Bearer {key}"]
        output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(output)))
    times = sorted(float(row["response-time"]) * 1000 for row in rows)
    span = max(float(row["offset"]) + float(row["response-time"]) for row in rows)
    return Run(
        rps=len(rows) / span,
        p50_ms=_percentile(times, 50),
        p99_ms=_percentile(times, 99),
        errors=sum(row["status-code"] != "200" for row in rows),
        statuses=Counter(row["status-code"] for row in rows if row["status-code"] != "200"),
    )


def _percentile(values: list[float], pct: float) -> float:
    return values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))]


def _print_row(mode: str, concurrency: int, direct: list[Run], through: list[Run]) -> None:
    def med(runs: list[Run], field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in runs))

    added50 = statistics.median(t.p50_ms - d.p50_ms for d, t in zip(direct, through, strict=True))
    added99 = statistics.median(t.p99_ms - d.p99_ms for d, t in zip(direct, through, strict=True))
    errors = sum(run.errors for run in direct + through)
    statuses = sum((run.statuses for run in direct + through), Counter[str]())
    print(
        f"{mode:<7}{concurrency:>5} | {med(direct, 'rps'):>10.0f} {med(direct, 'p50_ms'):>7.2f}"
        f" {med(direct, 'p99_ms'):>7.2f} | {med(through, 'rps'):>11.0f}"
        f" {med(through, 'p50_ms'):>7.2f} {med(through, 'p99_ms'):>7.2f} |"
        f" {added50:>9.2f} {added99:>9.2f} {errors:>6} {dict(statuses) if statuses else ''}",
        flush=True,
    )


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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
