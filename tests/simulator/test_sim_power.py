"""The simulated GPUs' power: the model's figures, DCGM exporter text, counters, ground truth."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator import SimConfig, SimServer, Step
from simulator.__main__ import parse_args
from simulator.config import DEFAULT_MODEL as MODEL
from simulator.config import TimingModel
from simulator.power import PowerModel
from simulator.testing import http
from tests.support.waiting import wait_until

OTHER_MODEL = "other-model"
GPUS = 2
SPEEDUP = 20
TIMING = TimingModel()
POWER = PowerModel()
DCGM_LABELS = {
    "gpu",
    "UUID",
    "pci_bus_id",
    "device",
    "modelName",
    "Hostname",
    "DCGM_FI_DRIVER_VERSION",
}


def _serve(**overrides: Any) -> Iterator[SimServer]:
    config = SimConfig(port=0, models=(MODEL, OTHER_MODEL), gpus=GPUS, **overrides)
    with SimServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def timed() -> Iterator[SimServer]:
    yield from _serve(name="power-timed", speedup=SPEEDUP)


@pytest.fixture(scope="module")
def instant() -> Iterator[SimServer]:
    yield from _serve(name="power-instant", speedup=0)


@pytest.fixture(params=["instant", "timed"])
def sim(request: pytest.FixtureRequest) -> SimServer:
    server: SimServer = request.getfixturevalue(request.param)
    server.reset()
    return server


def _step(
    *, prefill_tokens: int = 0, prefill_seqs: int = 0, decode_batch: int = 0, decode_passes: int = 1
) -> Step:
    prefill_s = TIMING.prefill_seconds(prefill_seqs, prefill_tokens)
    decode_s = decode_passes * TIMING.decode_seconds(decode_batch)
    return Step(
        model=MODEL,
        started_at=0.0,
        duration_s=prefill_s + decode_s,
        batch_size=decode_batch + prefill_seqs,
        prefill_tokens=prefill_tokens,
        decode_tokens=decode_batch * decode_passes,
        work=(),
        prefill_s=prefill_s,
        decode_s=decode_s,
        decode_batch=decode_batch,
    )


def _dcgm(sim: SimServer) -> dict[str, dict[int, tuple[float, dict[str, str]]]]:
    """{metric name: {gpu index: (value, labels)}} parsed by Prometheus's own parser."""
    result = http("GET", sim.url + "/dcgm/metrics")
    assert result.status == 200
    assert result.headers["Content-Type"].startswith("text/plain")
    parsed: dict[str, dict[int, tuple[float, dict[str, str]]]] = {}
    for family in text_string_to_metric_families(result.body.decode()):
        # Keyed by family: the parser names a counter's samples <family>_total.
        for sample in family.samples:
            by_gpu = parsed.setdefault(f"{family.type}:{family.name}", {})
            by_gpu[int(sample.labels["gpu"])] = (sample.value, sample.labels)
    return parsed


def _counters(sim: SimServer) -> dict[int, float]:
    samples = _dcgm(sim)["counter:DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]
    return {gpu: value for gpu, (value, _) in samples.items()}


def _watts(sim: SimServer) -> dict[int, float]:
    samples = _dcgm(sim)["gauge:DCGM_FI_DEV_POWER_USAGE"]
    return {gpu: value for gpu, (value, _) in samples.items()}


def _gpus_of(energy: dict[str, Any], model: str) -> dict[int, dict[str, Any]]:
    return {gpu["index"]: gpu for gpu in energy["gpus"] if gpu["model"] == model}


def _quiet(sim: SimServer) -> None:
    """Wait until no sequence runs or waits, so a request about to be sent runs alone."""

    def quiet() -> bool:
        engines = sim.stats()["engines"].values()
        return all(engine["running"] == engine["waiting"] == 0 for engine in engines)

    wait_until(quiet, timeout=10, interval=0.01, what="the engines to go quiet")


def _client(sim: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)


def _prompt(words: int) -> list[dict[str, str]]:
    # A fresh prefix each time, so the prefix cache never makes two prompts cost alike.
    return [{"role": "user", "content": f"{uuid.uuid4().hex} " + "energy " * words}]


def _assert_conserved(energy: dict[str, Any]) -> None:
    attributed = sum(energy["requests"].values())
    spent = attributed + energy["idle_j"] + energy["running_j"]
    assert spent == pytest.approx(energy["total_j"], rel=1e-9)
    assert sum(gpu["energy_j"] for gpu in energy["gpus"]) == pytest.approx(
        energy["total_j"], rel=1e-12
    )


@pytest.mark.parametrize(("batch", "watts"), [(8, 486), (64, 610), (128, 669), (256, 691)])
def test_decode_power_passes_through_the_measured_points(batch: int, watts: float) -> None:
    assert POWER.decode_watts(batch) == watts


def test_decode_power_is_linear_between_points_and_flat_outside() -> None:
    assert POWER.decode_watts(1) == 300
    assert POWER.decode_watts(36) == pytest.approx(486 + (610 - 486) * 28 / 56)
    assert POWER.decode_watts(192) == pytest.approx(680)
    assert POWER.decode_watts(0) == 300
    assert POWER.decode_watts(512) == 691
    assert POWER.idle_w == 110


def test_prefill_moves_a_step_toward_700_w_by_its_share_of_the_step() -> None:
    decode_only = _step(decode_batch=8)
    prefill_only = _step(prefill_tokens=20, prefill_seqs=1)
    heavy = _step(prefill_tokens=8192, prefill_seqs=4, decode_batch=8)

    assert POWER.step_watts(decode_only) == 486
    assert POWER.step_watts(prefill_only) == pytest.approx(700)
    share = heavy.prefill_s / heavy.duration_s
    assert POWER.step_watts(heavy) == pytest.approx(486 + share * (700 - 486))
    assert 690 < POWER.step_watts(heavy) < 700


def test_no_step_draws_more_than_700_w_or_less_than_a_single_sequence_decode() -> None:
    watts = [
        POWER.step_watts(
            _step(prefill_tokens=tokens, prefill_seqs=1 if tokens else 0, decode_batch=batch)
        )
        for batch in (0, 1, 3, 8, 50, 64, 200, 256, 300, 1024)
        for tokens in (0, 1, 100, 2000, 8192, 100_000)
        if batch or tokens
    ]

    assert all(300 <= value <= 700 + 1e-9 for value in watts)


def test_a_request_alone_costs_its_prefill_at_700_w_and_its_decode_at_batch_one(
    sim: SimServer,
) -> None:
    _quiet(sim)
    key = uuid.uuid4().hex
    response = _client(sim).chat.completions.create(
        model=MODEL,
        messages=_prompt(3000),
        max_tokens=40,
        extra_body={"ignore_eos": True},
        extra_headers={"x-request-id": key},
    )
    assert response.usage is not None

    prefill_j = 700 * TIMING.prefill_seconds(1, response.usage.prompt_tokens)
    decode_j = 300 * 39 * TIMING.decode_seconds(1)
    requests = sim.energy()["requests"]
    assert requests[key] == pytest.approx(GPUS * (prefill_j + decode_j), rel=1e-9)
    assert response.id not in requests


def test_a_prompt_with_one_output_token_runs_at_the_700_w_limit(sim: SimServer) -> None:
    _quiet(sim)
    key = uuid.uuid4().hex
    response = _client(sim).chat.completions.create(
        model=MODEL, messages=_prompt(6000), max_tokens=1, extra_headers={"x-request-id": key}
    )
    assert response.usage is not None

    joules = sim.energy([key])["requests"][key]
    seconds = TIMING.prefill_seconds(1, response.usage.prompt_tokens)
    assert joules / seconds / GPUS == pytest.approx(700)


def test_a_request_without_an_id_header_is_keyed_by_the_simulator_id(sim: SimServer) -> None:
    response = _client(sim).chat.completions.create(model=MODEL, messages=_prompt(5), max_tokens=3)

    assert sim.energy([response.id])["requests"][response.id] > 0


def test_an_embedding_is_priced_as_a_700_w_prefill_pass(sim: SimServer) -> None:
    key = uuid.uuid4().hex
    result = _client(sim).embeddings.create(
        model=OTHER_MODEL, input="one two three four", extra_headers={"x-request-id": key}
    )

    seconds = TIMING.embed_seconds(result.usage.prompt_tokens)
    assert sim.energy([key])["requests"][key] == pytest.approx(GPUS * 700 * seconds)


async def _chat(session: aiohttp.ClientSession, sim: SimServer, key: str, **body: Any) -> None:
    # Every answer exactly max_tokens long, however early the model would stop: the test
    # compares the energy of answers of known lengths.
    payload = {"model": MODEL, "messages": _prompt(body.pop("words", 20)), "ignore_eos": True}
    payload |= body
    async with session.post(
        f"{sim.base_url}/chat/completions", json=payload, headers={"x-request-id": key}
    ) as response:
        assert response.status == 200
        await response.read()


async def _completion_of_two_prompts(session: aiohttp.ClientSession, sim: SimServer) -> str:
    """Two sequences in one request, sent without an id header; returns the simulator's id."""
    payload = {"model": MODEL, "prompt": [uuid.uuid4().hex, uuid.uuid4().hex], "max_tokens": 9}
    async with session.post(f"{sim.base_url}/completions", json=payload) as response:
        assert response.status == 200
        body = await response.json()
    assert len(body["choices"]) == 2
    request_id: str = body["id"]
    return request_id


async def _cut_stream(session: aiohttp.ClientSession, sim: SimServer, key: str) -> None:
    sim.arm_fault(kind="disconnect", after_tokens=5)
    payload = {"model": MODEL, "messages": _prompt(50), "max_tokens": 200, "stream": True}
    async with session.post(
        f"{sim.base_url}/chat/completions", json=payload, headers={"x-request-id": key}
    ) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_energy_is_conserved_over_a_mixed_workload(sim: SimServer) -> None:
    keys = {kind: [f"{kind}-{uuid.uuid4().hex}" for _ in range(6)] for kind in ("chat", "long")}
    keys["reasoning"] = [f"reasoning-{uuid.uuid4().hex}" for _ in range(3)]
    cut = f"cut-{uuid.uuid4().hex}"
    other = f"other-{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as session:
        await _cut_stream(session, sim, cut)
        two_prompts, *_ = await asyncio.gather(
            _completion_of_two_prompts(session, sim),
            *(_chat(session, sim, key, max_tokens=20) for key in keys["chat"]),
            *(_chat(session, sim, key, words=2500, max_tokens=30) for key in keys["long"]),
            *(
                _chat(session, sim, key, max_tokens=600, reasoning_effort="high", stream=True)
                for key in keys["reasoning"]
            ),
            _chat(session, sim, other, model=OTHER_MODEL, max_tokens=50),
        )
    _quiet(sim)

    energy = sim.energy()
    _assert_conserved(energy)
    requests = energy["requests"]
    for group in [*keys.values(), [two_prompts, other]]:
        assert all(requests[key] > 0 for key in group)
    # A long reasoning answer costs more than a short chat; a cut one still cost something.
    assert min(requests[key] for key in keys["reasoning"]) > max(
        requests[key] for key in keys["chat"]
    )
    assert 0 < requests[cut] < min(requests[key] for key in keys["reasoning"])
    for model in (MODEL, OTHER_MODEL):
        group = [gpu["energy_j"] for gpu in _gpus_of(energy, model).values()]
        assert len(group) == GPUS
        # One tensor-parallel group: the GPUs share the work, within their +-2% spread.
        assert max(group) / min(group) < 1.05


def test_the_dcgm_text_has_the_exporter_s_metrics_and_labels_for_every_gpu(
    timed: SimServer,
) -> None:
    raw = http("GET", timed.url + "/dcgm/metrics").body.decode()
    parsed = _dcgm(timed)
    energy = timed.energy()

    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in raw
    assert "_total" not in raw
    assert set(parsed) == {
        "gauge:DCGM_FI_DEV_POWER_USAGE",
        "counter:DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    }
    uuids = {gpu["index"]: gpu["uuid"] for gpu in energy["gpus"]}
    for samples in parsed.values():
        assert sorted(samples) == [0, 1, 2, 3]
        for index, (_, labels) in samples.items():
            assert set(labels) == DCGM_LABELS
            assert labels["UUID"] == uuids[index]
            assert labels["device"] == f"nvidia{index}"
            assert labels["modelName"] == "NVIDIA H100 80GB HBM3"
            assert labels["Hostname"] == "power-timed"
    assert len(set(uuids.values())) == 4
    assert all(value.startswith("GPU-") for value in uuids.values())


def test_uuids_are_stable_across_restarts_of_the_same_backend() -> None:
    config = SimConfig(port=0, name="stable", speedup=0, gpus=3)
    with SimServer(config) as first:
        before = [gpu["uuid"] for gpu in first.energy()["gpus"]]
    with SimServer(config) as second:
        after = [gpu["uuid"] for gpu in second.energy()["gpus"]]

    assert before == after
    assert len(set(before)) == 3


def test_counters_read_the_ground_truth_in_whole_millijoules() -> None:
    with SimServer(SimConfig(port=0, speedup=SPEEDUP, gpus=GPUS)) as fresh:
        _client(fresh).chat.completions.create(model=MODEL, messages=_prompt(50), max_tokens=9)
        earlier = fresh.energy()["gpus"]
        counters = _counters(fresh)
        later = fresh.energy()["gpus"]

    for before, after in zip(earlier, later, strict=True):
        index = before["index"]
        # Read between two ground-truth readings, and truncated to whole millijoules.
        assert before["energy_j"] * 1000 - 1 <= counters[index] <= after["energy_j"] * 1000
        assert before["counter_mj"] <= counters[index] <= after["counter_mj"]
        assert counters[index] == int(counters[index])


def test_counters_only_grow_and_grow_by_what_a_request_used(sim: SimServer) -> None:
    key = uuid.uuid4().hex
    before = _counters(sim)

    _client(sim).chat.completions.create(
        model=MODEL, messages=_prompt(200), max_tokens=30, extra_headers={"x-request-id": key}
    )
    after = _counters(sim)

    assert all(after[gpu] > before[gpu] for gpu in before)
    used_mj = sim.energy([key])["requests"][key] * 1000
    served = _gpus_of(sim.energy(), MODEL)
    assert sum(after[gpu] - before[gpu] for gpu in served) >= used_mj - GPUS


def test_idle_energy_accrues_at_idle_power_times_speedup(timed: SimServer) -> None:
    _quiet(timed)
    started = time.monotonic()
    first = timed.energy()
    first_read = time.monotonic()
    time.sleep(0.2)  # kept a sleep, the scenario: idle energy accrues over a measured stretch
    second_started = time.monotonic()
    second = timed.energy()
    ended = time.monotonic()

    rate = 110 * 2 * GPUS * SPEEDUP  # watts x modelled seconds per wall second, both groups
    idle = second["idle_j"] - first["idle_j"]
    assert rate * (second_started - first_read) <= idle <= rate * (ended - started)
    assert second["total_j"] - first["total_j"] == pytest.approx(idle, rel=1e-9)


async def test_the_power_gauge_shows_idle_watts_then_the_batch_s_watts(timed: SimServer) -> None:
    _quiet(timed)
    idle = _watts(timed)
    assert sum(idle.values()) == pytest.approx(110 * 2 * GPUS)
    assert all(106 < watts < 115 for watts in idle.values())

    # Long answers, whatever the prompts' own lengths: all 16 still decode when it is read.
    payload = {"model": MODEL, "messages": _prompt(10), "max_tokens": 1500, "ignore_eos": True}
    payload["stream"] = True
    async with aiohttp.ClientSession() as session:
        responses = [
            await session.post(f"{timed.base_url}/chat/completions", json=payload)
            for _ in range(16)
        ]
        for response in responses:
            await response.content.readline()
        busy = await asyncio.to_thread(_watts, timed)
        for response in responses:
            await response.read()
            response.release()

    served = _gpus_of(timed.energy(), MODEL)
    # 16 sequences decode together (503.7 W), or fewer while the last are admitted at 700 W.
    assert all(300 * 0.97 < busy[gpu] < 700 * 1.03 for gpu in served)
    assert sum(busy[gpu] for gpu in served) > GPUS * 300
    assert all(busy[gpu] == pytest.approx(idle[gpu]) for gpu in busy if gpu not in served)


def test_a_counter_reset_zeroes_the_exported_counters_not_the_ground_truth(
    sim: SimServer,
) -> None:
    _client(sim).chat.completions.create(model=MODEL, messages=_prompt(100), max_tokens=20)
    before = _counters(sim)
    truth_before = sim.energy()

    sim.reset_energy_counters()
    after = _counters(sim)
    truth_after = sim.energy()

    assert truth_after["counter_resets"] == truth_before["counter_resets"] + 1
    assert truth_after["total_j"] >= truth_before["total_j"]
    since = {gpu["index"]: gpu["energy_j"] for gpu in truth_after["gpus"]}
    for gpu in truth_before["gpus"]:
        index = gpu["index"]
        assert after[index] < before[index]
        # Only what accrued between the reset and the scrape: idle, a few millijoules' worth.
        assert after[index] <= (since[index] - gpu["energy_j"]) * 1000 + 1
    _client(sim).chat.completions.create(model=MODEL, messages=_prompt(100), max_tokens=20)
    assert all(value > after[gpu] for gpu, value in _counters(sim).items())
    _assert_conserved(sim.energy())


@pytest.mark.parametrize(
    "spec", [b'{"energy_counter_reset": false}', b'{"energy_counter_reset": true, "count": 2}']
)
def test_a_bad_counter_reset_is_rejected(instant: SimServer, spec: bytes) -> None:
    result = http("POST", instant.url + "/_sim/faults", spec)

    assert result.status == 400
    assert "energy_counter_reset" in result.json()["error"]["message"]


def test_ground_truth_can_be_read_for_chosen_requests_only(instant: SimServer) -> None:
    keys = [uuid.uuid4().hex for _ in range(3)]
    client = _client(instant)
    for key in keys:
        client.chat.completions.create(
            model=MODEL, messages=_prompt(5), max_tokens=2, extra_headers={"x-request-id": key}
        )

    chosen = instant.energy([keys[0], keys[2], "never-seen"])["requests"]

    assert sorted(chosen) == sorted([keys[0], keys[2]])


def test_gpus_per_backend_is_an_option() -> None:
    assert parse_args(["--gpus", "8"]).gpus == 8
    assert parse_args([]).gpus == 1
    with pytest.raises(SystemExit):
        parse_args(["--gpus", "0"])


def test_a_larger_models_pace_is_an_option() -> None:
    pace = ["--prefill-tokens-per-s", "4000", "--prefill-base-ms", "25"]
    pace += ["--decode-base-ms", "20", "--decode-per-seq-ms", "0.2"]
    timing = parse_args(pace).timing
    assert timing.prefill_seconds(1, 4000) == pytest.approx(1.025)
    assert timing.decode_seconds(10) == pytest.approx(0.022)
    with pytest.raises(SystemExit):
        parse_args(["--prefill-tokens-per-s", "0"])


def test_the_energy_counter_grows_through_a_step_as_a_gpus_does() -> None:
    from simulator.engine import Engine
    from simulator.power import Power

    config = SimConfig(speedup=1.0, gpus=1)
    engine = Engine(model=MODEL, config=config)
    power = Power(config, {MODEL: engine})
    start = time.monotonic()
    # A one-second prefill pass at the board limit, in progress: no longer waiting for work.
    engine.running_step = Step(MODEL, start, 1.0, 1, 20_000, 0, (), 1.0, 0.0, 0)
    engine._idle_since = None

    [quarter] = power.readings(start + 0.25)
    [three_quarters] = power.readings(start + 0.75)
    [after] = power.readings(start + 2.0)

    # 700 W for half a second, and never more than the step's 700 J.
    assert three_quarters.energy_j - quarter.energy_j == pytest.approx(350 * quarter.gpu.factor)
    assert after.energy_j - quarter.energy_j == pytest.approx(525 * quarter.gpu.factor)
    snapshot = power.snapshot()
    assert snapshot["running_j"] > 0 and not snapshot["requests"]
