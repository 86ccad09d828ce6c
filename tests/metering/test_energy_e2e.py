"""Energy end to end (promise P5), against the simulator's ground truth.

The real gateway in front of a simulated backend with a tensor-parallel group of two GPUs;
accounts of every tier send a mixed workload (short chats, long prompts, long reasoning
outputs) while the collector scrapes five times a second. Then the meter drains, the model
is calibrated from the telemetry, the attribution job runs, and the figures are compared with
what the simulator knows each request cost (`GET /_sim/energy`).
"""

import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis
from django.conf import settings
from django.db import connection

from customers.models import LimitOverride
from fleet.models import Backend
from fleet.services import backend_register
from metering.attribution import (
    CalibrationPolicy,
    attribution_horizons,
    energy_attribute,
    energy_calibrate,
)
from metering.models import EnergyCalibration, EnergyInterval, GpuSample, UsageRecord
from metering.telemetry import telemetry_scrape
from tests.support.gateway import wait_routable
from tests.support.http import call
from tests.support.ledger import drain
from tests.support.servers import Server, free_port
from tests.support.tenants import UPSTREAM_MODEL, Tenant, tenant_create

SCRAPE_SECONDS = 0.2
SPEEDUP = 5
GPUS = 2
# The simulator's idle draw (110 W a GPU) as the counters show it per wall-clock second.
IDLE_WATTS = 110 * GPUS * SPEEDUP
WORDS = (  # noqa: SIM905 -- reads better as prose
    "energy token watt batch prefill decode gateway backend tensor kernel memory cluster "
    "the of and to in is that for it as was with be by on not this are or from at which"
).split()


@dataclass
class Account:
    """A tenant and what it sends: (prompt words, max_tokens, streamed) per request."""

    label: str
    tier: str
    requests: list[tuple[int, int, bool]]
    gap: float  # mean seconds between two of its requests, per thread
    threads: int = 1
    # Shared by all its requests, so the backend's prefix cache serves most of it.
    system_words: int = 0
    tenant: Tenant | None = None
    sent: list[tuple[str, int]] = field(default_factory=list)  # (request id, status)


def mixed_workload(rng: random.Random) -> list[Account]:
    def some(n: int, prompt: tuple[int, int], output: tuple[int, int], stream: float) -> Any:
        return [
            (rng.randint(*prompt), rng.randint(*output), rng.random() < stream) for _ in range(n)
        ]

    return [
        Account("free chat", "free", some(36, (20, 80), (20, 120), 0.5), gap=0.25),
        Account("free essays", "free", some(5, (600, 900), (200, 400), 0.0), gap=1.5),
        Account("interactive chat", "interactive", some(40, (20, 120), (20, 150), 0.5), 0.35, 2),
        Account("long prompts", "interactive", some(14, (3000, 6000), (16, 64), 0.5), gap=0.6),
        Account("reasoning", "premium", some(8, (30, 100), (1200, 3000), 0.5), gap=0.8, threads=2),
        Account(
            "agent",
            "premium",
            some(12, (100, 1500), (50, 900), 0.5),
            gap=0.5,
            threads=2,
            system_words=1000,
        ),
    ]


class Scraper(threading.Thread):
    """The collector's scheduled job on a fixed period, as Celery beat runs it."""

    def __init__(self, backend: str) -> None:
        super().__init__(daemon=True)
        self.backend = backend
        self.stop = threading.Event()
        self.paused = threading.Event()

    def once(self) -> str:
        return telemetry_scrape(timeout=2.0, min_gap=0.0, names=[self.backend])[self.backend]

    def run(self) -> None:
        try:
            while not self.stop.wait(SCRAPE_SECONDS):
                if not self.paused.is_set():
                    self.once()
        finally:
            connection.close()


def start_sim(port: int, name: str) -> Server:
    args = [sys.executable, "-m", "simulator", "--port", str(port), "--name", name]
    args += ["--model", UPSTREAM_MODEL, "--seed", "23", "--speedup", str(SPEEDUP)]
    return Server([*args, "--gpus", str(GPUS)], port=port, ready_path="/health", env={})


@dataclass
class Fleet:
    """A simulator of our own, registered as the only backend of a model of our own."""

    name: str
    model: str
    gateway: Server
    server: Server

    def restart(self) -> None:
        """SIGKILL and start again on the same port: same GPUs, counters from zero."""
        self.server.kill()
        self.server.log.close()
        self.server = start_sim(self.server.port, self.name)

    def truth(self, ids: str | None = "") -> dict[str, Any]:
        query = "" if ids is None else f"?ids={ids}"
        reply = call("GET", f"{self.server.url}/_sim/energy{query}")
        assert reply.status == 200, reply.body
        result: dict[str, Any] = reply.json()
        return result


@pytest.fixture(scope="module")
def fleet_factory(live_db: None, gateway: Server) -> Iterator[Callable[[], Fleet]]:
    made: list[Fleet] = []

    def make() -> Fleet:
        name = f"energy-{uuid.uuid4().hex[:6]}"
        server = start_sim(free_port(), name)
        backend_register(
            name=name,
            base_url=server.url,
            upstream_model=UPSTREAM_MODEL,
            public_models=[f"{name}-8b"],
            telemetry_url=server.url + "/dcgm/metrics",
            supports_priority=True,
        )
        made.append(Fleet(name, f"{name}-8b", gateway, server))
        return made[-1]

    yield make
    for fleet in made:
        fleet.server.stop()
        Backend.objects.filter(name=fleet.name).update(enabled=False)
        for table in (EnergyInterval, GpuSample, EnergyCalibration):
            table.objects.filter(backend=fleet.name).delete()


def send_all(fleet: Fleet, account: Account, seed: int) -> list[threading.Thread]:
    assert account.tenant is not None
    key = account.tenant.key
    rng = random.Random(seed)
    system = " ".join(rng.choice(WORDS) for _ in range(account.system_words))

    def worker(share: list[tuple[int, int, bool]], rng: random.Random) -> None:
        for prompt_words, max_tokens, stream in share:
            time.sleep(rng.expovariate(1 / account.gap))  # kept a sleep: paces the load
            messages = [{"role": "user", "content": " ".join(rng.choices(WORDS, k=prompt_words))}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
            body = {"model": fleet.model, "messages": messages, "max_tokens": max_tokens}
            if stream:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            reply = call(
                "POST", fleet.gateway.url + "/v1/chat/completions", orjson.dumps(body), key
            )
            account.sent.append((reply.headers["x-request-id"], reply.status))

    return [
        threading.Thread(
            target=worker, args=(account.requests[n :: account.threads], random.Random(seed + n))
        )
        for n in range(account.threads)
    ]


@dataclass
class Result:
    fleet: Fleet
    accounts: list[Account]
    intervals: list[EnergyInterval]
    samples: list[GpuSample]
    records: dict[str, UsageRecord]  # by the request id the client saw
    truth: dict[str, float]  # joules by request id
    truth_idle_j: float  # over the scraped span, give or take the two bracketing reads
    calibration: EnergyCalibration | None
    pending: int


def run(
    fleet: Fleet, accounts: list[Account], faults: Callable[[Scraper], None] | None = None
) -> Result:
    """Send the workload while scraping; then drain, calibrate, attribute and read the truth."""
    for account in accounts:
        account.tenant = tenant_create(account.tier)
        # Limits are not what this measures: a free account's 20 requests a minute would
        # refuse part of its workload.
        LimitOverride.objects.create(
            account=account.tenant.account,
            requests_per_minute=10_000,
            tokens_per_minute=10**9,
            tokens_per_day=10**10,
        )
    wait_routable(fleet.gateway, accounts[0].tenant.key, fleet.model)  # type: ignore[union-attr]
    scraper = Scraper(fleet.name)
    before = fleet.truth()
    scraper.once()
    scraper.start()
    time.sleep(0.5)  # kept a sleep, the scenario: scrapes of an idle stretch before the load
    threads = [t for n, a in enumerate(accounts) for t in send_all(fleet, a, seed=100 * n)]
    for thread in threads:
        thread.start()
    if faults is not None:
        faults(scraper)
    for thread in threads:
        thread.join()
    time.sleep(0.5)  # kept a sleep, the scenario: and of an idle stretch after it
    scraper.stop.set()
    scraper.join()
    scraper.once()
    after = fleet.truth(ids=None)
    drain()
    client = redis.Redis.from_url(settings.REDIS_URL)
    at = time.time()
    horizons = attribution_horizons(client, now=at)
    client.close()
    now = datetime.fromtimestamp(at, UTC)
    assert horizons is not None and fleet.name not in horizons  # every record is stored
    # The run is all there will be: fit on it, however precise the prices come out.
    policy = CalibrationPolicy(
        lookback=timedelta(hours=1), max_lag=timedelta(hours=6), price_error=None
    )
    calibration = energy_calibrate(backend=fleet.name, now=now, until=now, policy=policy)
    energy_attribute(horizons=horizons, now=now, max_lag=policy.max_lag)
    intervals = list(EnergyInterval.objects.filter(backend=fleet.name).order_by("started_at"))
    ids = [rid for account in accounts for rid, _ in account.sent]
    stored = UsageRecord.objects.filter(
        request_id__in=[uuid.UUID(rid.removeprefix("req_")) for rid in ids]
    )
    return Result(
        fleet=fleet,
        accounts=accounts,
        intervals=intervals,
        samples=list(GpuSample.objects.filter(backend=fleet.name).order_by("scraped_at")),
        records={f"req_{record.request_id.hex}": record for record in stored},
        truth=after["requests"],
        truth_idle_j=after["idle_j"] - before["idle_j"],
        calibration=calibration,
        pending=sum(1 for row in intervals if row.attributed_at is None),
    )


@pytest.fixture(scope="module")
def mixed(fleet_factory: Callable[[], Fleet]) -> Result:
    return run(fleet_factory(), mixed_workload(random.Random(4)))


def percent(value: float, truth: float) -> float:
    return 100 * (value - truth) / truth


def test_every_interval_is_attributed_and_attributed_plus_idle_is_what_was_measured(
    mixed: Result,
) -> None:
    assert mixed.pending == 0
    assert len(mixed.intervals) > 30
    for row in mixed.intervals:
        assert row.idle_j is not None and row.attributed_j is not None
        assert row.attributed_j >= 0 and row.idle_j >= 0
        assert row.attributed_j + row.idle_j == pytest.approx(row.energy_j, rel=1e-12)


def test_the_intervals_hold_every_joule_the_gpu_counters_counted(mixed: Result) -> None:
    first, last = mixed.samples[0].scraped_at, mixed.samples[-1].scraped_at
    counted = sum(s.energy_mj for s in mixed.samples if s.scraped_at == last) - sum(
        s.energy_mj for s in mixed.samples if s.scraped_at == first
    )
    assert not any(row.counter_reset for row in mixed.intervals)
    assert sum(row.energy_j for row in mixed.intervals) == pytest.approx(counted / 1000, rel=1e-9)


def test_the_usage_records_carry_all_the_attributed_energy(mixed: Result) -> None:
    on_records = sum(r.energy_joules or 0 for r in mixed.records.values())
    attributed = sum(row.attributed_j or 0 for row in mixed.intervals)
    assert on_records == pytest.approx(attributed, rel=1e-9)
    assert all(r.energy_joules for r in mixed.records.values() if r.completion_tokens)


def test_each_accounts_energy_is_within_five_percent_of_the_ground_truth(mixed: Result) -> None:
    lines, worst = [], 0.0
    for account in mixed.accounts:
        ids = [rid for rid, status in account.sent if status == 200]
        assert ids, account.label
        truth = sum(mixed.truth[rid] for rid in ids)
        attributed = sum(mixed.records[rid].energy_joules or 0 for rid in ids)
        error = percent(attributed, truth)
        worst = max(worst, abs(error))
        lines.append(f"  {account.label:18} {len(ids):3} requests {truth:12.0f} J {error:+6.2f}%")
    print("\nper-account energy vs ground truth (attributed, error):", *lines, sep="\n")
    assert worst < 5.0


def test_the_per_request_error_distribution(mixed: Result) -> None:
    errors = sorted(
        abs(percent(record.energy_joules or 0, mixed.truth[rid]))
        for rid, record in mixed.records.items()
        if record.status_code == 200
    )
    cuts = statistics.quantiles(errors, n=100)
    print(
        f"\nper-request |error| over {len(errors)} requests: p50 {cuts[49]:.1f}% "
        f"p90 {cuts[89]:.1f}% p99 {cuts[98]:.1f}% max {errors[-1]:.1f}%"
    )
    assert cuts[49] < 5.0


def test_idle_energy_is_reported_beside_and_close_to_the_truth(mixed: Result) -> None:
    idle = sum(row.idle_j or 0 for row in mixed.intervals)
    measured = sum(row.energy_j for row in mixed.intervals)
    assert mixed.calibration is not None
    c = mixed.calibration
    print(
        f"\nidle {idle:.0f} J of {measured:.0f} J measured ({100 * idle / measured:.1f}%), "
        f"truth {mixed.truth_idle_j:.0f} J ({percent(idle, mixed.truth_idle_j):+.1f}%); "
        f"fit over {c.intervals} intervals: idle {c.idle_watts:.0f} W (model {IDLE_WATTS} W), "
        f"prefill {c.prefill_j_per_token:.4f} J/token + {c.prefill_j_per_request:.1f} J, "
        f"decode {', '.join(f'{w:.0f}' for w in c.decode_watts)} W at 1, 2, 4, ... sequences + "
        f"{c.decode_j_per_token:.4f} J/token, "
        f"R^2 {c.r_squared:.4f}; time to first token {1000 * c.ttft_seconds:.2f} ms + "
        f"{1e6 * c.ttft_seconds_per_token:.2f} µs/token, a pass {1000 * c.prefill_seconds:.2f} ms"
    )
    assert idle > 0
    assert abs(percent(idle, mixed.truth_idle_j)) < 10.0


def test_counter_reset_missed_scrapes_and_a_backend_restart_mid_interval(
    fleet_factory: Callable[[], Fleet],
) -> None:
    fleet = fleet_factory()
    rng = random.Random(9)
    accounts = [
        Account("chat", "interactive", [(50, 60, True)] * 30, gap=0.25, threads=2),
        Account(
            "reasoning", "premium", [(40, rng.randint(800, 1600), True) for _ in range(6)], 0.7
        ),
    ]

    def faults(scraper: Scraper) -> None:
        # Kept sleeps, the scenario: a timeline of faults placed in the middle of the load.
        time.sleep(1.5)
        reply = call("POST", fleet.server.url + "/_sim/faults", b'{"energy_counter_reset": true}')
        assert reply.status == 200
        time.sleep(1.0)
        scraper.paused.set()  # four ticks go by unscraped
        time.sleep(4 * SCRAPE_SECONDS)
        scraper.paused.clear()
        time.sleep(1.0)
        fleet.restart()  # with requests in flight, between two scrapes

    result = run(fleet, accounts, faults)

    assert result.pending == 0
    for row in result.intervals:
        assert row.attributed_j + row.idle_j == pytest.approx(row.energy_j, rel=1e-12)
    # The reset and the restart each flag the interval they fell in: a lower bound.
    assert sum(row.counter_reset for row in result.intervals) >= 2
    longest = max(row.ended_at - row.started_at for row in result.intervals)
    assert longest >= timedelta(seconds=4 * SCRAPE_SECONDS)
    on_records = sum(r.energy_joules or 0 for r in result.records.values())
    assert on_records == pytest.approx(sum(row.attributed_j for row in result.intervals))
    # Requests cut off by the restart did no work the ledger knows of, or some: either way
    # every record with tokens that ran under telemetry has energy, and none without.
    for record in result.records.values():
        if record.prompt_tokens - record.cached_prompt_tokens + record.completion_tokens == 0:
            assert record.energy_joules is None
        else:
            assert record.energy_joules is not None
    failed = [status for account in accounts for _, status in account.sent if status != 200]
    print(f"\nfaults run: {len(result.intervals)} intervals, {len(failed)} requests failed")
