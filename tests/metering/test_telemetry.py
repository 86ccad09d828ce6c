"""The telemetry collector against real simulated backends: samples, intervals, live figures.

The simulator's ground truth (`/_sim/energy`) is read just before and just after each scrape,
so the energy the collector stored must lie between the two readings: an exact check that
cannot pass by accident, on a machine whose timings are noisy.
"""

import itertools
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import orjson
import pytest
import redis
from django.db import connection

from fleet.models import Backend
from fleet.services import backend_register
from metering.models import EnergyInterval, GpuSample
from metering.prometheus import EngineTotals, GpuReading, dcgm_readings, vllm_totals
from metering.tasks import scrape_telemetry
from metering.telemetry import (
    LIVE_KEY,
    SAMPLE_RETENTION,
    Outcome,
    energy_delta,
    engine_delta,
    telemetry_scrape,
)
from tests.support.http import call
from tests.support.servers import Server, free_port, start_simulator
from tests.support.tenants import UPSTREAM_MODEL

# mJ counters: each GPU's reading is rounded to the millijoule.
ROUNDING_J = 0.001

DCGM_TEXT = """\
# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{gpu="1",UUID="GPU-b",pci_bus_id="00000000:3C:00.0",device="nvidia1",\
modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 486.5
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-a",pci_bus_id="00000000:3B:00.0",device="nvidia0",\
modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 110.25
# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-b",pci_bus_id="00000000:3C:00.0",\
device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 9007199254740
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-a",pci_bus_id="00000000:3B:00.0",\
device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 123456789
# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 41
"""

VLLM_TEXT = """\
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="llama"} 1200.0
vllm:prompt_tokens_total{model_name="qwen"} 30.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{model_name="llama"} 1.7e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="llama"} 800.0
# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_bucket{le="1.0",model_name="llama"} 610.0
vllm:iteration_tokens_total_bucket{le="+Inf",model_name="llama"} 640.0
vllm:iteration_tokens_total_count{model_name="llama"} 640.0
vllm:iteration_tokens_total_sum{model_name="llama"} 2000.0
# HELP vllm:request_prefill_time_seconds Histogram of time spent in PREFILL phase for request.
# TYPE vllm:request_prefill_time_seconds histogram
vllm:request_prefill_time_seconds_bucket{le="+Inf",model_name="llama"} 12.0
vllm:request_prefill_time_seconds_count{model_name="llama"} 12.0
vllm:request_prefill_time_seconds_sum{model_name="llama"} 0.75
"""


# Parsing ---------------------------------------------------------------------------------


def test_it_reads_each_gpus_energy_and_power_from_dcgm_exporter_text() -> None:
    assert dcgm_readings(DCGM_TEXT) == [
        GpuReading(uuid="GPU-a", index=0, energy_mj=123456789, power_w=110.25),
        GpuReading(uuid="GPU-b", index=1, energy_mj=9007199254740, power_w=486.5),
    ]


def test_it_leaves_out_what_dcgm_reports_as_blank() -> None:
    text = (
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-a"} 9223372036854775794\n'
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-b"} 5000\n'
        'DCGM_FI_DEV_POWER_USAGE{gpu="1",UUID="GPU-b"} 140737488355328\n'
    )
    assert dcgm_readings(text) == [GpuReading(uuid="GPU-b", index=1, energy_mj=5000, power_w=0.0)]


def test_it_rejects_text_that_is_not_the_prometheus_format() -> None:
    with pytest.raises(ValueError):
        dcgm_readings('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0" 12\n')


def test_it_reads_vllm_token_counters_engine_steps_and_prefill_times_per_model() -> None:
    assert vllm_totals(VLLM_TEXT) == {
        "llama": EngineTotals(1200, 800, iterations=640, prefills=12, prefill_seconds=0.75),
        "qwen": EngineTotals(prompt=30, generation=0),
    }


# Interval arithmetic ---------------------------------------------------------------------


def test_energy_is_the_sum_of_each_gpus_counter_delta() -> None:
    delta = energy_delta(
        previous={"a": 1_000, "b": 5_000}, current={"a": 1_700, "b": 5_300}, earlier={}
    )
    assert (delta.energy_mj, delta.inexact) == (1_000, False)


def test_a_counter_that_went_backwards_counts_its_new_value_and_is_flagged() -> None:
    delta = energy_delta(
        previous={"a": 9_000, "b": 5_000}, current={"a": 40, "b": 5_300}, earlier={}
    )
    assert (delta.energy_mj, delta.inexact) == (340, True)


def test_a_new_gpu_only_sets_its_baseline_and_flags_the_interval() -> None:
    delta = energy_delta(previous={"a": 1_000}, current={"a": 1_500, "b": 10**12}, earlier={})
    assert (delta.energy_mj, delta.inexact) == (500, True)


def test_a_missing_gpu_flags_the_interval() -> None:
    delta = energy_delta(previous={"a": 1_000, "b": 7}, current={"a": 1_500}, earlier={})
    assert (delta.energy_mj, delta.inexact) == (500, True)


def test_a_gpu_back_from_a_missed_reading_counts_everything_since_its_last_one() -> None:
    delta = energy_delta(
        previous={"a": 1_000}, current={"a": 1_500, "b": 2_600}, earlier={"b": 2_000}
    )
    assert (delta.energy_mj, delta.inexact) == (1_100, True)


def test_token_deltas_sum_over_models_and_count_a_new_model_from_zero() -> None:
    before = {"llama": EngineTotals(100, 50, iterations=40, prefills=2, prefill_seconds=0.5)}
    after = {
        "llama": EngineTotals(160, 90, iterations=75, prefills=5, prefill_seconds=1.25),
        "qwen": EngineTotals(7, 3, iterations=3, prefills=1, prefill_seconds=0.25),
    }
    assert engine_delta(previous=before, current=after) == (
        EngineTotals(67, 43, iterations=38, prefills=4, prefill_seconds=1.0),
        False,
    )


def test_engine_steps_are_unknown_unless_every_model_reports_them_both_times() -> None:
    before = {"llama": EngineTotals(prompt=100, generation=50)}  # an older engine, or a reading
    after = {"llama": EngineTotals(prompt=160, generation=90, iterations=75)}  # kept before
    assert engine_delta(previous=before, current=after) == (
        EngineTotals(prompt=60, generation=40, iterations=None),
        False,
    )


def test_token_counters_that_restarted_count_their_new_values() -> None:
    before = {"llama": EngineTotals(prompt=100, generation=50)}
    after = {"llama": EngineTotals(prompt=12, generation=60)}
    assert engine_delta(previous=before, current=after) == (
        EngineTotals(prompt=12, generation=10),
        True,
    )


def test_token_deltas_are_unknown_when_either_reading_is() -> None:
    totals = {"llama": EngineTotals(prompt=1, generation=1)}
    assert engine_delta(previous=None, current=totals) == (None, False)
    assert engine_delta(previous=totals, current=None) == (None, False)


# Against the simulator ---------------------------------------------------------------------


def sim_args(port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "simulator",
        "--port",
        str(port),
        "--model",
        UPSTREAM_MODEL,
        *extra,
    ]


@pytest.fixture(scope="module")
def sim() -> Iterator[Server]:
    server = start_simulator(
        "--model", UPSTREAM_MODEL, "--seed", "11", "--speedup", "20", "--gpus", "2"
    )
    yield server
    server.stop()


def register(server: Server) -> Backend:
    name = f"tel-{uuid.uuid4().hex[:8]}"
    return backend_register(
        name=name,
        base_url=server.url,
        upstream_model=UPSTREAM_MODEL,
        public_models=[f"{name}-model"],
        telemetry_url=server.url + "/dcgm/metrics",
    )


@pytest.fixture
def backend(live_db: None, sim: Server) -> Iterator[Backend]:
    backend = register(sim)
    yield backend
    Backend.objects.filter(pk=backend.pk).update(enabled=False)


def ground_truth(server: Server) -> dict[str, float]:
    """Each GPU's energy (J) by UUID, as the simulator knows it."""
    reply = call("GET", server.url + "/_sim/energy?ids=").json()
    return {gpu["uuid"]: gpu["energy_j"] for gpu in reply["gpus"]}


@dataclass
class Bracketed:
    outcome: Outcome
    before: dict[str, float]
    after: dict[str, float]


def scrape(backend: Backend, server: Server, min_gap: float = 0.0) -> Bracketed:
    before = ground_truth(server)
    outcome = telemetry_scrape(timeout=2.0, min_gap=min_gap, names=[backend.name])[backend.name]
    return Bracketed(outcome=outcome, before=before, after=ground_truth(server))


def intervals(backend: Backend) -> list[EnergyInterval]:
    return list(EnergyInterval.objects.filter(backend=backend.name).order_by("started_at"))


def samples(backend: Backend) -> list[GpuSample]:
    return list(GpuSample.objects.filter(backend=backend.name).order_by("scraped_at", "gpu_index"))


def assert_tiled(rows: list[EnergyInterval]) -> None:
    for previous, following in itertools.pairwise(rows):
        assert following.started_at == previous.ended_at


def assert_between(energy_j: float, start: Bracketed, end: Bracketed) -> None:
    """The interval's energy lies between what the GPUs used from the latest possible reading
    of the start to the earliest of the end, and from the earliest to the latest."""
    gpus = len(end.after)
    least = sum(end.before.values()) - sum(start.after.values())
    most = sum(end.after.values()) - sum(start.before.values())
    assert least - gpus * ROUNDING_J <= energy_j <= most + gpus * ROUNDING_J


def chat(server: Server, max_tokens: int, content: str = "Tell me about GPUs.") -> dict[str, int]:
    body = {
        "model": UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }
    reply = call("POST", server.url + "/v1/chat/completions", json.dumps(body).encode())
    assert reply.status == 200, reply.body
    usage: dict[str, int] = reply.json()["usage"]
    return usage


def load(server: Server, requests: int = 8, max_tokens: int = 200) -> list[dict[str, int]]:
    with ThreadPoolExecutor(4) as pool:
        return list(
            pool.map(lambda i: chat(server, max_tokens, f"Question {i}? " * 40), range(requests))
        )


def test_each_scrape_stores_every_gpu_as_the_exporter_reported_it(
    backend: Backend, sim: Server
) -> None:
    first = scrape(backend, sim)
    load(sim)
    second = scrape(backend, sim)
    assert (first.outcome, second.outcome) == (Outcome.FIRST, Outcome.WRITTEN)
    rows = samples(backend)
    assert len(rows) == 4 and len({row.gpu_uuid for row in rows}) == 2
    assert [row.gpu_index for row in rows] == [0, 1, 0, 1]
    for row, bracket in zip(rows, [first, first, second, second], strict=True):
        energy_j = row.energy_mj / 1000
        assert bracket.before[row.gpu_uuid] - ROUNDING_J <= energy_j
        assert energy_j <= bracket.after[row.gpu_uuid] + ROUNDING_J
        assert 100 <= row.power_w <= 700


def test_an_interval_holds_the_energy_the_gpus_used_between_two_scrapes(
    backend: Backend, sim: Server
) -> None:
    first = scrape(backend, sim)
    load(sim)
    second = scrape(backend, sim)
    load(sim, requests=4)
    third = scrape(backend, sim)
    rows = intervals(backend)
    assert len(rows) == 2
    assert_tiled(rows)
    assert_between(rows[0].energy_j, first, second)
    assert_between(rows[1].energy_j, second, third)
    assert [(row.gpus, row.counter_reset) for row in rows] == [(2, False), (2, False)]
    counters = samples(backend)
    assert rows[1].energy_j == pytest.approx(
        (sum(s.energy_mj for s in counters[4:]) - sum(s.energy_mj for s in counters[2:4])) / 1000
    )


def test_token_deltas_are_the_tokens_the_engine_served_in_the_interval(
    backend: Backend, sim: Server
) -> None:
    scrape(backend, sim)
    usages = load(sim, requests=6, max_tokens=120)
    scrape(backend, sim)
    [row] = intervals(backend)
    assert row.prompt_tokens == sum(usage["prompt_tokens"] for usage in usages)
    assert row.generation_tokens == sum(usage["completion_tokens"] for usage in usages)
    # Each step makes one token of every sequence in it, and at least one token.
    assert row.iterations is not None
    assert max(u["completion_tokens"] for u in usages) <= row.iterations <= row.generation_tokens
    # The engine timed each request's prefill, by its own clock.
    assert row.engine_prefills == len(usages)
    assert row.engine_prefill_seconds is not None and row.engine_prefill_seconds > 0


def test_energy_is_stored_when_the_engines_metrics_cannot_be_read(
    live_db: None, sim: Server
) -> None:
    backend = register(sim)
    Backend.objects.filter(pk=backend.pk).update(base_url=sim.url + "/no-engine-here")
    try:
        scrape(backend, sim)
        assert scrape(backend, sim).outcome == Outcome.WRITTEN
    finally:
        Backend.objects.filter(pk=backend.pk).update(enabled=False)
    [row] = intervals(backend)
    assert (row.prompt_tokens, row.generation_tokens, row.iterations) == (None, None, None)
    assert (row.engine_prefills, row.engine_prefill_seconds) == (None, None)
    assert row.energy_j > 0


def test_a_missed_scrape_makes_one_longer_interval_with_all_its_energy(
    backend: Backend, sim: Server
) -> None:
    first = scrape(backend, sim)
    second = scrape(backend, sim)
    load(sim)  # meanwhile a tick passes without a scrape
    load(sim)
    third = scrape(backend, sim)
    rows = intervals(backend)
    assert len(rows) == 2
    assert_tiled(rows)
    assert rows[1].ended_at - rows[1].started_at > rows[0].ended_at - rows[0].started_at
    assert_between(rows[1].energy_j, second, third)
    assert_between(sum(row.energy_j for row in rows), first, third)


def test_a_counter_reset_is_flagged_and_counts_the_energy_since_the_reset(
    backend: Backend, sim: Server
) -> None:
    scrape(backend, sim)
    load(sim)
    reply = call("POST", sim.url + "/_sim/faults", b'{"energy_counter_reset": true}')
    assert reply.status == 200, reply.body
    scrape(backend, sim)
    [row] = intervals(backend)
    after_reset = samples(backend)[2:]
    assert row.counter_reset
    assert row.energy_j == pytest.approx(sum(s.energy_mj for s in after_reset) / 1000)
    assert row.energy_j > 0


def test_a_backend_that_is_down_writes_nothing_and_the_interval_after_spans_the_gap(
    live_db: None, redis_client: redis.Redis
) -> None:
    port = free_port()
    # The restarted backend runs in real time: its counter since the restart stays below the
    # old one, as a real GPU's does (it counts since the driver loaded, usually days).
    server = Server(
        sim_args(port, "--seed", "5", "--speedup", "20", "--gpus", "2"),
        port=port,
        ready_path="/health",
        env={},
    )
    backend = register(server)
    try:
        scrape(backend, server)
        load(server)
        scrape(backend, server)
        server.stop()
        assert redis_client.hexists(LIVE_KEY, backend.name)
        stored = (len(samples(backend)), len(intervals(backend)))
        assert telemetry_scrape(timeout=2.0, min_gap=0, names=[backend.name]) == {
            backend.name: Outcome.DOWN
        }
        assert (len(samples(backend)), len(intervals(backend))) == stored
        assert not redis_client.hexists(LIVE_KEY, backend.name)
        server = Server(
            sim_args(port, "--seed", "5", "--speedup", "1", "--gpus", "2"),
            port=port,
            ready_path="/health",
            env={},
        )
        assert scrape(backend, server).outcome == Outcome.WRITTEN
    finally:
        server.stop()
        Backend.objects.filter(pk=backend.pk).update(enabled=False)
    before_down, after_restart = intervals(backend)
    assert after_restart.started_at == before_down.ended_at
    assert after_restart.counter_reset
    restarted = samples(backend)[-2:]
    assert after_restart.energy_j == pytest.approx(sum(s.energy_mj for s in restarted) / 1000)


def test_it_scrapes_many_backends_with_many_gpus_in_one_run(
    live_db: None, backend: Backend, sim: Server
) -> None:
    big = start_simulator(
        "--model", UPSTREAM_MODEL, "--seed", "9", "--speedup", "20", "--gpus", "8"
    )
    wide = register(big)
    names = [backend.name, wide.name]
    try:
        assert set(telemetry_scrape(timeout=2.0, min_gap=0, names=names).values()) == {
            Outcome.FIRST
        }
        start = scrape(wide, big)
        end = scrape(wide, big)
        assert set(telemetry_scrape(timeout=2.0, min_gap=0, names=names).values()) == {
            Outcome.WRITTEN
        }
    finally:
        big.stop()
        Backend.objects.filter(pk=wide.pk).update(enabled=False)
    assert len({row.gpu_uuid for row in samples(wide)}) == 8
    assert {row.gpus for row in intervals(wide)} == {8}
    assert_between(intervals(wide)[1].energy_j, start, end)
    assert len(intervals(backend)) == 1


def test_concurrent_scrapers_write_each_interval_once(backend: Backend, sim: Server) -> None:
    scrape(backend, sim)
    rounds, outcomes = 3, []
    barrier = threading.Barrier(2)

    def scraper() -> None:
        try:
            for _ in range(rounds):
                threading.Event().wait(1.1)  # past min_gap since the last scrape
                barrier.wait()
                outcomes.append(telemetry_scrape(timeout=2.0, min_gap=1.0, names=[backend.name]))
        finally:
            connection.close()

    threads = [threading.Thread(target=scraper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written = [o[backend.name] for o in outcomes].count(Outcome.WRITTEN)
    assert written == rounds
    assert {o[backend.name] for o in outcomes} <= {Outcome.WRITTEN, Outcome.BUSY, Outcome.RECENT}
    rows = intervals(backend)
    assert len(rows) == rounds
    assert_tiled(rows)
    assert len(samples(backend)) == 2 * (rounds + 1)


def test_live_figures_follow_the_last_interval(
    backend: Backend, sim: Server, redis_client: redis.Redis
) -> None:
    scrape(backend, sim)
    load(sim)
    scrape(backend, sim)
    [row] = intervals(backend)
    live = orjson.loads(redis_client.hget(LIVE_KEY, backend.name) or b"{}")
    seconds = (row.ended_at - row.started_at).total_seconds()
    assert live["power_w"] == pytest.approx(sum(s.power_w for s in samples(backend)[2:]))
    assert live["tokens_per_s"] == pytest.approx(row.generation_tokens / seconds)
    assert live["tokens_per_watt"] == pytest.approx(row.generation_tokens / row.energy_j)
    assert live["at"] == pytest.approx(row.ended_at.timestamp())


def test_the_beat_task_scrapes_with_the_configured_period(backend: Backend, sim: Server) -> None:
    assert scrape_telemetry.apply().get()[backend.name] == Outcome.FIRST
    # Half a period has not passed: a second tick right away (a burst of queued ticks) waits.
    assert scrape_telemetry.apply().get()[backend.name] == Outcome.RECENT
    assert len(samples(backend)) == 2


def test_samples_past_retention_are_pruned(backend: Backend, sim: Server) -> None:
    scrape(backend, sim)
    [oldest] = samples(backend)[:1]
    GpuSample.objects.filter(pk=oldest.pk).update(
        scraped_at=oldest.scraped_at - SAMPLE_RETENTION - timedelta(minutes=1)
    )
    scrape(backend, sim)
    assert not GpuSample.objects.filter(pk=oldest.pk).exists()
    assert len(samples(backend)) == 3
