"""Energy attribution and calibration on the real PostgreSQL and Redis (docs/energy.md)."""

import math
import threading
import time
import uuid
from dataclasses import astuple, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from django.conf import settings
from django.db import connection

from metering.attribution import (
    MIN_INTERVALS,
    CalibrationPolicy,
    Coefficients,
    Fit,
    IntervalWork,
    Prompts,
    StepTime,
    Timing,
    attribution_horizons,
    calibration_fit,
    calibration_terms,
    decoding_beside,
    energy_attribute,
    energy_calibrate,
    energy_calibration_configure,
    engine_prefill_times,
    measured_timing,
    prefill_time_fit,
    step_time_fit,
    stepped_with,
)
from metering.events import INFLIGHT_ENTRIES, USAGE_STREAM
from metering.models import EnergyCalibration, EnergyInterval, UsageRecord
from metering.selectors import energy_efficiency, energy_idle
from metering.services import usage_records_write

# A whole minute an hour ago, so that calibration windows (floor of epoch / window) align.
T0 = datetime.fromtimestamp(time.time() // 60 * 60 - 3600, UTC)
LAG = timedelta(hours=6)
# Idle 100 W; a prompt token costs a quarter of an output token; no time-shared terms, so
# shares follow tokens alone.
MODEL = Coefficients(
    idle_watts=100.0,
    prefill_j_per_token=0.1,
    prefill_j_per_request=0.0,
    decode_watts=(0.0,),
    decode_j_per_token=0.4,
)
POLICY = CalibrationPolicy(lookback=timedelta(hours=2), max_lag=LAG)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def usage(
    *,
    start: float,
    end: float,
    first_token: float | None = None,
    prompt: int = 0,
    cached: int = 0,
    completion: int = 0,
    queue_wait: float = 0.0,
    backend: str = "gpu-a",
    account_id: int = 1,
    tier: str = "premium",
) -> uuid.UUID:
    """Store one usage record; times are seconds after T0, the first token's too."""
    request_id = uuid.uuid4()
    record = {
        "request_id": request_id,
        "account_id": account_id,
        "api_key_id": 1,
        "tier": tier,
        "model": "m",
        "backend": backend,
        "endpoint": "chat.completions",
        "prompt_tokens": prompt,
        "cached_prompt_tokens": cached,
        "completion_tokens": completion,
        "reasoning_tokens": 0,
        "tokens_estimated": False,
        "queue_wait_ms": queue_wait * 1000,
        "ttft_ms": None if first_token is None else (first_token - start) * 1000,
        "latency_ms": (end - start) * 1000,
        "status_code": 200,
        "outcome": "ok",
        "streamed": False,
        "started_at": at(start),
        "ended_at": at(end),
        "energy_joules": None,
    }
    usage_records_write(records=[record])
    return request_id


def interval(start: float, end: float, energy_j: float, backend: str = "gpu-a") -> EnergyInterval:
    return EnergyInterval.objects.create(
        backend=backend, started_at=at(start), ended_at=at(end), energy_j=energy_j, gpus=1
    )


def calibrate(backend: str = "gpu-a", model: Coefficients = MODEL) -> None:
    energy_calibration_configure(backend=backend, coefficients=model, now=at(0))


def attribute(horizons: dict[str, float] | None = None, now: float = 3600) -> int:
    return energy_attribute(horizons=horizons or {}, now=at(now), max_lag=LAG).intervals


def energy(request_id: uuid.UUID) -> float | None:
    return UsageRecord.objects.get(request_id=request_id).energy_joules


@pytest.mark.django_db
def test_decode_energy_is_split_by_output_tokens_and_idle_time_is_idle() -> None:
    calibrate()
    # Busy from 1 s to 9 s of a 10 s interval: 2 idle seconds at 100 W.
    small = usage(start=1, first_token=1, end=9, completion=100)
    large = usage(start=2, first_token=2, end=8, completion=300)
    measured = interval(0, 10, energy_j=1000)

    assert attribute() == 1

    measured.refresh_from_db()
    assert measured.idle_j == pytest.approx(200)
    assert measured.attributed_j == pytest.approx(800)
    assert measured.requests == 2
    assert energy(small) == pytest.approx(200)
    assert energy(large) == pytest.approx(600)


@pytest.mark.django_db
def test_prompt_tokens_weigh_by_the_prefill_to_decode_ratio_and_cached_ones_not_at_all() -> None:
    calibrate()
    # 1,000 uncached prompt tokens at a quarter of an output token = 250 output tokens' work.
    reader = usage(start=0, first_token=1, end=2, prompt=1200, cached=200, completion=50)
    writer = usage(start=0, first_token=0, end=2, prompt=0, completion=200)
    interval(0, 2, energy_j=500)

    attribute()

    assert energy(reader) == pytest.approx(500 * 300 / 500)
    assert energy(writer) == pytest.approx(500 * 200 / 500)


@pytest.mark.django_db
def test_a_request_spanning_intervals_gets_each_ones_share_by_its_time_in_it() -> None:
    calibrate()
    # Prefill over [0, 1], decode over [1, 5]: interval [0, 2] holds all of the prefill and a
    # quarter of the decode; interval [2, 5] the rest of the decode.
    long = usage(start=0, first_token=1, end=5, prompt=400, completion=400)
    short = usage(start=3, first_token=3, end=4, completion=100)
    first, second = interval(0, 2, energy_j=300), interval(2, 5, energy_j=600)

    assert attribute() == 2

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.idle_j, second.idle_j) == (0, 0)
    # second: long did 300 output tokens there, short 100.
    assert energy(long) == pytest.approx(300 + 600 * 300 / 400)
    assert energy(short) == pytest.approx(600 * 100 / 400)


@pytest.mark.django_db
def test_attributed_plus_idle_is_measured_in_every_interval() -> None:
    calibrate()
    for n in range(30):
        usage(start=n * 0.7, first_token=n * 0.7 + 0.05, end=n * 0.7 + 1.9, prompt=n * 37,
              completion=5 + n * 11, account_id=n % 3)  # fmt: skip
    intervals = [interval(n, n + 1, energy_j=150 + 17 * n) for n in range(25)]

    assert attribute() == 25

    total = 0.0
    for row in intervals:
        row.refresh_from_db()
        assert row.idle_j is not None and row.attributed_j is not None
        assert row.attributed_j + row.idle_j == pytest.approx(row.energy_j, rel=1e-12)
        total += row.attributed_j
    stored = sum(r.energy_joules or 0 for r in UsageRecord.objects.all())
    assert stored == pytest.approx(total, rel=1e-12)


@pytest.mark.django_db
def test_an_interval_with_no_work_is_all_idle_and_idle_never_exceeds_what_was_measured() -> None:
    calibrate()
    quiet = interval(0, 10, energy_j=2000)
    # Half the interval idle would be 500 J at 100 W, more than the 300 J measured.
    usage(start=15, first_token=15, end=20, completion=10)
    low = interval(10, 20, energy_j=300)

    attribute()

    quiet.refresh_from_db()
    low.refresh_from_db()
    assert (quiet.idle_j, quiet.attributed_j, quiet.requests) == (2000, 0, 0)
    assert (low.idle_j, low.attributed_j) == (300, 0)


@pytest.mark.django_db
def test_requests_of_other_backends_and_requests_that_did_no_work_get_nothing() -> None:
    calibrate()
    elsewhere = usage(start=0, first_token=0, end=10, completion=100, backend="gpu-b")
    refused = usage(start=0, end=10)
    mine = usage(start=0, first_token=0, end=10, completion=100)
    interval(0, 10, energy_j=1000)

    attribute()

    assert energy(elsewhere) is None
    assert energy(refused) is None
    assert energy(mine) == pytest.approx(1000)


@pytest.mark.django_db
def test_time_in_the_gateways_queue_is_not_time_on_the_backend() -> None:
    calibrate()
    # Arrived at 0, waited 6 s for a slot, then ran from 6 to 10: 6 idle seconds.
    request = usage(start=0, queue_wait=6, first_token=6, end=10, completion=100)
    measured = interval(0, 10, energy_j=1000)

    attribute()

    measured.refresh_from_db()
    assert measured.idle_j == pytest.approx(600)
    assert energy(request) == pytest.approx(400)


@pytest.mark.django_db
def test_running_attribution_again_changes_nothing() -> None:
    calibrate()
    request = usage(start=0, first_token=0, end=10, completion=100)
    interval(0, 10, energy_j=1000)
    attribute()

    assert attribute() == 0
    assert energy(request) == pytest.approx(1000)


@pytest.mark.django_db
def test_an_interval_waits_for_requests_that_started_before_it_ended() -> None:
    calibrate()
    usage(start=0, first_token=0, end=5, completion=100)
    interval(0, 5, energy_j=500)
    second = interval(5, 10, energy_j=500)
    # A request of this backend started at 7 s has no record yet.
    horizon = at(7).timestamp()

    assert attribute({"gpu-a": horizon}) == 1
    second.refresh_from_db()
    assert second.attributed_at is None

    # Past the maximum lag the interval goes ahead without it.
    assert attribute({"gpu-a": horizon}, now=10 + LAG.total_seconds() + 1) == 1


@pytest.mark.django_db
def test_sequences_decoding_together_share_the_decode_power_equally_in_time() -> None:
    calibrate(model=Coefficients(0.0, 0.1, 0.0, decode_watts=(100.0,), decode_j_per_token=0.0))
    # alone for 5 s, then with another for 5 s: 5 + 5/2 seconds of the GPUs vs 5/2.
    early = usage(start=0, first_token=0, end=10, completion=10)
    late = usage(start=5, first_token=5, end=10, completion=1000)
    interval(0, 10, energy_j=1000)

    attribute()

    assert energy(early) == pytest.approx(750)
    assert energy(late) == pytest.approx(250)


@pytest.mark.django_db
def test_decode_power_follows_the_batch_curve() -> None:
    # 100 W decoding one sequence, 150 W two, 190 W four: two draw less than twice one.
    calibrate(model=Coefficients(0.0, 0.1, 0.0, decode_watts=(100.0, 150.0, 190.0),
                                 decode_j_per_token=0.0))  # fmt: skip
    first = usage(start=0, first_token=0, end=10, completion=50)
    second = usage(start=5, first_token=5, end=10, completion=50)
    together = 5 * 150
    interval(0, 10, energy_j=500 + together)

    attribute()

    assert energy(first) == pytest.approx(500 + together / 2)
    assert energy(second) == pytest.approx(together / 2)


@pytest.mark.django_db
def test_decode_power_between_two_knots_is_on_the_straight_line_between_them() -> None:
    calibrate(model=Coefficients(0.0, 0.1, 0.0, decode_watts=(100.0, 200.0, 300.0),
                                 decode_j_per_token=0.0))  # fmt: skip
    first = usage(start=0, first_token=0, end=10, completion=50)
    others = [usage(start=5, first_token=5, end=10, completion=50) for _ in range(2)]
    together = 5 * 250  # three sequences: halfway between 200 W at two and 300 W at four
    interval(0, 10, energy_j=500 + together)

    attribute()

    assert energy(first) == pytest.approx(500 + together / 3)
    assert [energy(r) for r in others] == [pytest.approx(together / 3)] * 2


@pytest.mark.django_db
def test_a_short_answer_the_gateway_saw_late_is_given_the_steps_its_output_took() -> None:
    # Steps of 10 ms: a long answer decodes through the whole second and a short one of 21
    # tokens beside it from 0.2 s to 0.4 s, but the gateway saw the short one's first token
    # only at 0.3 s.
    calibrate(model=Coefficients(0.0, 0.1, 0.0, decode_watts=(300.0,), decode_j_per_token=0.0,
                                 decode_step_seconds=0.01))  # fmt: skip
    long = usage(start=0, first_token=0, end=1, completion=101)
    short = usage(start=0.2, first_token=0.3, end=0.4, completion=21)
    interval(0, 1, energy_j=300)

    attribute()

    # The short one took 20 steps at two sequences: 0.1 s of the GPUs (30 J of the truth),
    # not the 0.05 s the gateway's span leaves it (15 J). The long one keeps what its span
    # gives it, 0.95 s.
    assert energy(short) == pytest.approx(300 * 0.1 / 1.05)
    assert energy(long) == pytest.approx(300 * 0.95 / 1.05)


@pytest.mark.django_db
def test_each_prefill_pays_its_fixed_cost_besides_its_tokens() -> None:
    calibrate(model=Coefficients(0.0, 0.01, 10.0, decode_watts=(0.0,), decode_j_per_token=0.1))
    short = usage(start=0, first_token=1, end=2, prompt=100, completion=100)
    long = usage(start=0, first_token=1, end=2, prompt=1000, completion=100)
    interval(0, 2, energy_j=72)

    attribute()

    # short: 1 + 10 + 10 = 21 J of work, long: 10 + 10 + 10 = 30 J, scaled to the 72 J.
    assert energy(short) == pytest.approx(72 * 21 / 51)
    assert energy(long) == pytest.approx(72 * 30 / 51)


@pytest.mark.django_db
def test_an_answer_that_was_not_streamed_starts_decoding_after_the_usual_prefill_time() -> None:
    calibrate(model=Coefficients(0.0, 0.0, 1.0, decode_watts=(1.0,), decode_j_per_token=0.0,
                                 ttft_seconds=1.0))  # fmt: skip
    whole = usage(start=0, end=4, completion=100)  # no first-token time: decodes from 1 s
    streamed = usage(start=0, first_token=0, end=4, completion=100)
    interval(0, 4, energy_j=600)

    attribute()

    # Each prefill 1; decode time: streamed alone for 1 s, then both for 3 s.
    assert energy(whole) == pytest.approx(600 * (1 + 1.5) / 6)
    assert energy(streamed) == pytest.approx(600 * (1 + 2.5) / 6)


@pytest.mark.django_db
def test_decoding_waits_while_a_prompt_is_computed() -> None:
    # A prompt token takes 1 ms of the GPUs: 2,000 of them hold it from 4 s to 6 s.
    calibrate(model=Coefficients(0.0, 0.008, 0.0, decode_watts=(1.0,), decode_j_per_token=0.1,
                                 ttft_seconds_per_token=0.001))  # fmt: skip
    decoder = usage(start=0, first_token=0, end=10, completion=100)
    reader = usage(start=2, first_token=6, end=6, prompt=2000)
    interval(0, 10, energy_j=340)

    attribute()

    # decoder: 8 s of decoding and its 100 tokens, all made in them (18); reader: 2,000 x 0.008.
    assert energy(decoder) == pytest.approx(180)
    assert energy(reader) == pytest.approx(160)


@pytest.mark.django_db
def test_prompts_computed_in_one_step_stall_the_decoders_for_all_their_tokens() -> None:
    calibrate(model=Coefficients(0.0, 0.008, 0.0, decode_watts=(1.0,), decode_j_per_token=0.1,
                                 ttft_seconds_per_token=0.001))  # fmt: skip
    decoder = usage(start=0, first_token=0, end=10, completion=100)
    # Both get their first token at the end of the step that computed their 3,000 tokens.
    readers = [usage(start=1, first_token=6, end=6, prompt=p) for p in (2000, 1000)]
    interval(0, 10, energy_j=41)

    attribute()

    # decoder: 7 s of decoding (not 8: the two prompts held the GPUs for 3 s, not 2) + 10.
    assert energy(decoder) == pytest.approx(17)
    assert [energy(r) for r in readers] == [pytest.approx(16), pytest.approx(8)]


@pytest.mark.django_db
def test_prompts_computed_in_one_step_share_its_pass_by_their_tokens() -> None:
    calibrate(model=Coefficients(0.0, 0.01, 9.0, decode_watts=(0.0,), decode_j_per_token=0.1,
                                 ttft_seconds_per_token=0.001, prefill_seconds=1.0))  # fmt: skip
    long, short = (usage(start=0, first_token=5, end=5, prompt=p) for p in (800, 100))
    interval(0, 10, energy_j=0.01 * 900 + 9)

    attribute()

    # The pass's 9 J go 8 to 1, as its work served 800 tokens and 100, not 4.5 J each.
    assert (energy(long), energy(short)) == (pytest.approx(8 + 8), pytest.approx(1 + 1))


@pytest.mark.django_db
def test_a_decoder_stalled_by_a_prompt_makes_all_its_tokens_faster_in_between() -> None:
    calibrate(model=Coefficients(0.0, 0.01, 0.0, decode_watts=(0.0,), decode_j_per_token=1.0,
                                 ttft_seconds_per_token=0.001))  # fmt: skip
    decoder = usage(start=0, first_token=0, end=10, completion=80)
    reader = usage(start=0, first_token=3, end=3, prompt=2000)  # computed from 1 s to 3 s
    # The decoder makes its 80 tokens in the 8 s it is not stalled: 30 in the first interval.
    interval(0, 5, energy_j=30 + 20)
    interval(5, 10, energy_j=50)

    attribute()

    assert energy(reader) == pytest.approx(20)
    assert energy(decoder) == pytest.approx(80)


@pytest.mark.django_db
def test_prompts_computed_together_share_one_pass() -> None:
    calibrate(model=Coefficients(0.0, 0.0, 10.0, decode_watts=(1.0,), decode_j_per_token=0.0,
                                 ttft_seconds_per_token=0.001))  # fmt: skip
    together = [usage(start=0, first_token=1, end=1, prompt=100) for _ in range(2)]
    alone = usage(start=5, first_token=6, end=6, prompt=100)
    interval(0, 10, energy_j=200)

    attribute()

    assert [energy(r) for r in together] == [pytest.approx(50), pytest.approx(50)]
    assert energy(alone) == pytest.approx(100)


def test_a_pass_holds_the_gpus_for_what_it_costs_beyond_the_decode_power() -> None:
    fit = Fit(Coefficients(1100.0, 0.07, 8.6, (2700.0, 3000.0), 0.4), intervals=50, r_squared=0.99)

    # Prefill draws 0.07 J / 10 µs = 7,000 W: 8.6 J beyond 2,700 W is 2 ms.
    assert Timing(0.01, 1e-5).pass_seconds(fit) == pytest.approx(0.002)
    assert Timing(0.001, 1e-5).pass_seconds(fit) == pytest.approx(0.001)  # the latency caps it
    assert Timing(0.01, 0.0).pass_seconds(fit) == 0.0


@pytest.mark.django_db
def test_without_a_calibration_intervals_wait_until_one_can_be_fitted() -> None:
    interval(0, 10, energy_j=1000)

    attributed = energy_attribute(horizons={}, now=at(3600), max_lag=LAG, calibration=POLICY)

    assert attributed.intervals == 0
    assert not EnergyCalibration.objects.filter(backend="gpu-a").exists()


# What the fit must recover: idle 100 W, 0.1 J a prompt token and 5 J a prefill, 300 W while
# decoding and 0.2 J an output token; the backend prefills 100,000 tokens a second.
TRUE = Coefficients(100.0, 0.1, 5.0, decode_watts=(300.0,), decode_j_per_token=0.2)
PREFILL_S_PER_TOKEN = 1e-5


def telemetry(intervals: int, *, reset_at: int | None = None) -> None:
    """One-second intervals, most holding one request, with the energy TRUE says it used."""
    for n in range(intervals):
        prompt, output = 200 + (n * 7919) % 3000, 1 + (n * 104729) % 700
        if n % 5 == 4:  # idle now and then: pins the idle power
            energy_j = TRUE.idle_watts
        else:
            start = n + 0.05 * (n % 3)
            first = start + prompt * PREFILL_S_PER_TOKEN
            end = first + 0.1 + 0.6 * ((n * 31) % 10) / 10
            usage(start=start, first_token=first, end=end, prompt=prompt, completion=output)
            energy_j = (
                TRUE.idle_watts * (1 - (end - start))
                + TRUE.prefill_j_per_token * prompt
                + TRUE.prefill_j_per_request
                + TRUE.decode_watts[0] * (end - first)
                + TRUE.decode_j_per_token * output
            )
        EnergyInterval.objects.create(
            backend="gpu-a",
            started_at=at(n),
            ended_at=at(n + 1),
            # A reset interval's energy is a lower bound: here, nonsense the fit must not see.
            energy_j=1.0 if n == reset_at else energy_j,
            gpus=1,
            counter_reset=n == reset_at,
        )


@pytest.mark.django_db
def test_a_missing_calibration_is_fitted_from_the_telemetry_and_the_ledger() -> None:
    telemetry(40, reset_at=7)

    attributed = energy_attribute(horizons={}, now=at(3600), max_lag=LAG, calibration=POLICY)

    assert attributed.intervals == 40
    fitted = EnergyCalibration.objects.get(backend="gpu-a")
    assert fitted.source == EnergyCalibration.Source.FITTED
    assert fitted.intervals == 39
    assert fitted.r_squared == pytest.approx(1)
    assert (fitted.idle_watts, fitted.prefill_j_per_request, fitted.decode_watts) == (
        pytest.approx(100, rel=1e-3),
        pytest.approx(5, rel=1e-3),
        [pytest.approx(300, rel=1e-3)],  # one sequence at a time: nothing known beyond
    )
    assert fitted.decode_j_per_token == pytest.approx(0.2, rel=1e-3)
    assert fitted.prefill_j_per_token == pytest.approx(0.1, rel=1e-3)
    assert fitted.ttft_seconds_per_token == pytest.approx(PREFILL_S_PER_TOKEN, rel=1e-3)
    assert fitted.ttft_seconds == pytest.approx(0, abs=1e-6)


# What the engine reports besides: a step takes 10 ms (one output token for each of the one
# to three sequences decoding), a prefill pass 0.5 ms besides its prompt's tokens, which the
# prefill power (0.1 J / 10 µs = 10 kW) makes the 5 J of TRUE.
STEP_S, PASS_S = 0.01, 0.0005


def engine_telemetry(intervals: int) -> None:
    """As telemetry(), with the engine's steps and prefill times in each interval; an energy
    fit alone could not tell the pass's 5 J from the prompt tokens' price here, as every busy
    interval computes one prompt."""
    for n in range(intervals):
        prompt, steps, batch = 200 + (n * 7919) % 3000, 5 + (n * 31) % 60, 1 + n % 3
        # Each sequence's first token comes from the pass, then one a step.
        output = steps + 1
        prefill = PASS_S + prompt * PREFILL_S_PER_TOKEN
        if n % 5 == 4:
            energy_j, iterations, prefills, prefill_seconds = TRUE.idle_watts, 0, 0, 0.0
        else:
            start = n + 0.05 * (n % 3)
            end = start + prefill + STEP_S * steps
            # One prompt to compute; the others' are cached.
            for sequence in range(batch):
                usage(start=start, first_token=start + prefill, end=end,
                      prompt=prompt if sequence == 0 else 0, completion=output)  # fmt: skip
            energy_j = (
                TRUE.idle_watts * (1 - (end - start))
                + TRUE.prefill_j_per_token * prompt
                + TRUE.prefill_j_per_request
                + TRUE.decode_watts[0] * STEP_S * steps
                + TRUE.decode_j_per_token * output * batch
            )
            # Its prefill time is its step's, which ran no decode pass: nothing was decoding
            # before the sequences' first tokens.
            iterations, prefills, prefill_seconds = steps, 1, prefill
        EnergyInterval.objects.create(
            backend="gpu-a",
            started_at=at(n),
            ended_at=at(n + 1),
            energy_j=energy_j,
            gpus=1,
            iterations=iterations,
            engine_prefills=prefills,
            engine_prefill_seconds=prefill_seconds,
        )


@pytest.mark.django_db
def test_with_the_engines_steps_and_prefill_times_a_pass_is_priced_by_its_time() -> None:
    engine_telemetry(60)

    fitted = energy_calibrate(backend="gpu-a", now=at(3600), until=at(60), policy=POLICY)

    assert fitted is not None
    assert fitted.prefill_seconds == pytest.approx(PASS_S, rel=1e-2)
    assert fitted.ttft_seconds_per_token == pytest.approx(PREFILL_S_PER_TOKEN, rel=1e-3)
    assert fitted.prefill_j_per_token == pytest.approx(0.1, rel=1e-2)
    assert fitted.prefill_j_per_request == pytest.approx(5, rel=2e-2)
    # 300 W, and 0.2 J a token at one token a step of 10 ms for each sequence: 20 W more
    # for each, at 1, 2 and (from three) 4 sequences.
    assert (fitted.idle_watts, fitted.decode_watts, fitted.decode_j_per_token) == (
        pytest.approx(100, rel=1e-2),
        pytest.approx([320, 340, 380], rel=1e-2),
        0,
    )


def prompts(*rows: tuple[float, int, float, float, bool]) -> Prompts:
    """(ended, uncached tokens, arrived, first token, the gateway saw it) for each prompt."""
    ended, tokens, arrived, first_token, timed = (np.array(c) for c in zip(*rows, strict=True))
    return Prompts(ended, tokens, arrived, first_token, timed.astype(bool))


@pytest.mark.django_db
def test_prompts_arrive_after_the_queue_and_unstreamed_ones_get_the_usual_first_token() -> None:
    usage(start=0, queue_wait=1, first_token=2, end=10, prompt=100, completion=5)
    usage(start=0, queue_wait=0.5, end=10, prompt=1000, cached=200, completion=5)
    usage(start=0, end=3, prompt=50)  # no first token: the engine never timed it
    span = {"lower": at(-60), "upper": at(60), "after": at(-60)}

    with connection.cursor() as cursor:
        fetched = Prompts.fetch(cursor, "gpu-a", span, Timing(0.1, 1e-3))

    order = np.argsort(fetched.tokens)
    epoch = T0.timestamp()
    assert fetched.tokens[order].tolist() == [100, 800]
    assert (fetched.arrived[order] - epoch).tolist() == pytest.approx([1, 0.5])
    # Not streamed: 0.1 s and 1 ms a token after it reached the backend.
    assert (fetched.first_token[order] - epoch).tolist() == pytest.approx([2, 1.4])
    assert fetched.timed[order].tolist() == [True, False]
    assert (fetched.ended - epoch).tolist() == pytest.approx([10, 10])


def test_the_prompts_computed_beside_decoding_sequences_are_counted_with_them() -> None:
    seen = [
        (10, 0, 0, 1, True),  # computed alone
        (15, 0, 4, 5, True),  # beside the first
        (13, 0, 11, 12, True),  # beside the second, the first gone
        (22, 0, 20, 21, True),  # alone again
    ]

    assert decoding_beside(prompts(*seen), batch=7) == (0.5, 0.5)
    # An answer that was not streamed decodes from its usual first token (here 0.5 s) on:
    # beside every prompt, and not a prompt the gateway saw computed.
    assert decoding_beside(prompts(*seen, (30, 0, 0, 0.5, False)), batch=7) == (1, 1.5)
    # No first token seen: every prompt beside the engine's mean batch.
    assert decoding_beside(prompts((10, 0, 0, 1, False)), batch=7) == (1, 7)


def test_prompts_that_arrive_while_a_long_one_is_computed_share_the_next_step() -> None:
    long, early, later, after = (
        (1.0, 8000, 0.0, 0.020, True),  # computed from 0 to 20 ms
        (1.0, 200, 0.005, 0.0215, True),
        (1.0, 300, 0.012, 0.0215, False),
        (1.0, 100, 0.050, 0.0505, True),  # arrives while only decoding runs
    )
    together = stepped_with(
        prompts(long, early, later, after), np.array([0.020, 0.0005, 0.0005, 0.0005])
    )

    assert together.tolist() == [0, 300, 200, 0]


PASS, PER_TOKEN = 0.01, 1e-5


def co_stepped(intervals: int) -> tuple[list[tuple[float, float, int, float]], Prompts]:
    """The engine's prefill times of a long prompt A computed alone each second, and of the
    prompts that arrived meanwhile (a second long one in every other second, and a chat),
    computed together in the next step: the engine times each of them as that step."""
    engine, rows = [], []
    for n in range(intervals):
        long_a, long_b, chat = 1000 + (n * 397) % 2000, 500 + (n * 211) % 2500, 100 + 37 * (n % 9)
        a_done = n + 0.1 + PASS + PER_TOKEN * long_a
        waiting = [(long_b, 0.002), (chat, 0.003)] if n % 2 == 0 else [(chat, 0.003)]
        step = PASS + PER_TOKEN * sum(tokens for tokens, _ in waiting)
        rows.append((n + 0.5, long_a, n + 0.1, a_done, True))
        rows += [(n + 0.5, t, n + 0.1 + late, a_done + step, True) for t, late in waiting]
        times = PASS + PER_TOKEN * long_a + len(waiting) * step
        engine.append((float(n), n + 1.0, 1 + len(waiting), times))
    return engine, prompts(*rows)


def test_the_engines_prefill_times_are_measured_against_the_tokens_of_their_steps() -> None:
    engine, seen = co_stepped(40)

    # Against each prompt's own tokens, a chat timed as the long prompt beside it makes a
    # prompt token seem half as slow again.
    own = prefill_time_fit(
        [
            (count, seconds, seen.tokens[seen.ended == start + 0.5].sum())
            for start, _, count, seconds in engine
        ]
    )
    measured = engine_prefill_times(engine, seen)

    assert own is not None and own[1] > 1.4 * PER_TOKEN
    assert measured == (pytest.approx(PASS, rel=1e-6), pytest.approx(PER_TOKEN, rel=1e-6))


def test_a_pass_is_its_prefill_time_less_the_decoding_beside_it() -> None:
    # A step of 10 ms and 0.1 ms a sequence; prefill times 2 ms besides their tokens'.
    steps = StepTime(fixed=0.01, per_pass=0.0, per_prompt_token=1e-5, per_output_token=1e-4)

    alone = measured_timing(Timing(), steps, (0.002, 1e-5), (0.0, 0.0))
    # Half computed beside a decode step, over three sequences on average.
    beside = measured_timing(Timing(), steps, (0.002 + 0.005 + 0.0003, 1e-5), (0.5, 3.0))

    assert alone is not None and alone.prefill_seconds == pytest.approx(0.002)
    assert beside is not None and beside.prefill_seconds == pytest.approx(0.002)
    assert measured_timing(Timing(), steps, (0.004, 1e-5), (1.0, 0.0)) is None


def test_the_fit_finds_a_decode_power_curve_that_bends_where_the_gpus_saturate() -> None:
    timing = Timing(0.01, 1e-5, 5e-4, measured=True)
    # The simulator's H100 curve: 300 W at one sequence, 26.6 W more for each up to 8, then
    # 2.2 W for each; intervals decode at 1 to 16 sequences, some between two knots.
    true = (300.0, 326.6, 379.8, 486.2, 503.8)

    def watts(batch: float) -> float:
        return float(np.interp(batch, (1, 2, 4, 8, 16), true))

    rows = []
    for n in range(40):
        batch, decoding = (1, 2, 3, 4, 6, 8, 12, 16)[n % 8], 0.2 + 0.1 * (n % 7)
        # Seconds by knot: a batch between two knots counts towards both, linearly.
        low = int(math.log2(batch))
        share = batch / 2**low - 1
        seconds = [0.0] * 5
        seconds[low] += decoding * (1 - share)
        if share:
            seconds[low + 1] += decoding * share
        prefill = 300 * (n % 4) * 1e-5 + 5e-4 * (n % 4 > 0)
        energy = 100 * (1 - decoding) + 1e4 * prefill + watts(batch) * decoding
        rows.append(IntervalWork(1 - decoding, 300 * (n % 4), n % 4 > 0, tuple(seconds), 0.0,
                                 energy, seconds=1.0))  # fmt: skip

    fit = calibration_fit(rows, timing=timing)

    assert fit is not None
    c = fit.coefficients
    assert c.decode_watts == pytest.approx(true)
    assert c.decode_power(12) == pytest.approx(watts(12))
    assert c.decode_power(64) == pytest.approx(503.8)  # flat past what the hour saw
    assert (c.idle_watts, c.prefill_j_per_token) == (pytest.approx(100), pytest.approx(0.1))


def test_a_new_backends_first_fit_waits_for_prices_it_knows_well() -> None:
    noise_j = 5.0  # leaves the prefill and the decode price 3-4% uncertain (a standard error)
    timing = Timing(0.01, 1e-5, 5e-4, measured=True)
    # idle W, prefill W, decode W (one sequence at a time)
    model = np.array((100.0, 1e4, 300.0))

    def intervals(noise: float) -> list[IntervalWork]:
        rows = []
        for n in range(30):
            work = IntervalWork(0.1, 1000 + 300 * (n % 7), 1 + n % 2, (0.5 + 0.1 * (n % 5),),
                                30 + n, 0.0, seconds=1.0, iterations=50)  # fmt: skip
            energy = float(model @ np.array(calibration_terms(work, timing, 0)))
            rows.append(replace(work, energy_j=energy + noise * ((n * 7919) % 11 - 5)))
        return rows

    assert calibration_fit(intervals(0.0), timing=timing, max_price_error=0.02) is not None
    # The same intervals a few joules off: a fit, but not one a first calibration may use.
    assert calibration_fit(intervals(noise_j), timing=timing) is not None
    assert calibration_fit(intervals(noise_j), timing=timing, max_price_error=0.02) is None


def test_a_backend_busy_all_the_time_still_has_its_steps_timed() -> None:
    # Seconds a step, a pass, a prompt token and an output token (the larger model of
    # bench.energy at speedup 5).
    line = np.array((4e-3, 5e-3, 5e-5, 5e-5))
    rows, wrong = [], []
    for n in range(40):
        # Intervals of 2.5 s, each busy for about 1.9 to 2.2 s, the gateway's jitter (±3%)
        # as large as what the counts move: R² 0.67 (the real run's 0.70), the line 2% off.
        counts = (380 + n % 9 * 5, 4 + n % 5, 5000 + n % 7 * 300, 2600 + n % 4 * 60)
        busy = float(line @ counts) * (1 + 0.015 * ((n * 7919) % 5 - 2))
        rows.append(IntervalWork(2.5 - busy, counts[2], counts[1], (1.0,), counts[3], 0.0,
                                 seconds=2.5, iterations=counts[0]))  # fmt: skip
        # Steps counted wrong (another engine's counter): the line misses by more, and
        # gives a step no time of its own.
        wrong.append(replace(rows[-1], iterations=(n * 7919) % 700))

    steps = step_time_fit(rows)
    assert steps is not None
    assert steps.fixed == pytest.approx(4e-3, rel=0.05)
    assert steps.per_output_token == pytest.approx(5e-5, rel=0.05)
    assert step_time_fit(wrong) is None


@pytest.mark.django_db
def test_the_fit_only_uses_intervals_whose_records_are_all_stored() -> None:
    telemetry(40)

    # Had records been missing after 15 s, the 15 complete intervals would be too few.
    assert energy_calibrate(backend="gpu-a", now=at(3600), until=at(15), policy=POLICY) is None
    fitted = energy_calibrate(backend="gpu-a", now=at(3600), until=at(40), policy=POLICY)
    assert fitted is not None and fitted.intervals == 40


@pytest.mark.django_db
def test_a_configured_calibration_is_not_replaced_by_the_fit() -> None:
    calibrate()
    telemetry(40)

    assert energy_calibrate(backend="gpu-a", now=at(3600), until=at(3600), policy=POLICY) is None
    assert EnergyCalibration.objects.get(backend="gpu-a").source == "configured"


def test_the_fit_refuses_thin_data_poor_fits_and_models_that_leave_work_unpriced() -> None:
    rows = [
        IntervalWork(0.2 * (n % 3), n % 7 * 100, n % 2, (0.5,), 30 + n, 5 + 0.3 * (n % 7) * 100)
        for n in range(30)
    ]
    fit = calibration_fit(rows, timing=Timing())
    assert fit is not None
    assert calibration_fit(rows[: MIN_INTERVALS - 1], timing=Timing()) is None
    # Energy that never moves with decoding: decode would get nothing.
    flat = [IntervalWork(r.idle_seconds, r.prefill_tokens, 0, (), 0, r.energy_j) for r in rows]
    assert calibration_fit(flat, timing=Timing()) is None
    # Energy the work does not explain (broken telemetry): no model at all beats a wrong one.
    noise = [IntervalWork(*astuple(r)[:5], 500 * (n * 7919 % 13)) for n, r in enumerate(rows)]
    assert calibration_fit(noise, timing=Timing()) is None


@pytest.fixture
def redis_db() -> Any:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(INFLIGHT_ENTRIES, USAGE_STREAM)
    yield client
    client.delete(INFLIGHT_ENTRIES, USAGE_STREAM)
    client.close()


def test_horizons_are_the_oldest_request_without_a_record_per_backend(
    redis_db: redis.Redis,
) -> None:
    entry = {"backend": "gpu-a", "started_at": 1000.0, "account_id": 1}
    redis_db.hset(INFLIGHT_ENTRIES, "r1", orjson.dumps(entry))
    redis_db.hset(INFLIGHT_ENTRIES, "r2", orjson.dumps({**entry, "started_at": 1500.0}))
    settled = {"backend": "gpu-b", "started_at": 1200.0}
    redis_db.xadd(USAGE_STREAM, {"kind": "final", "record": orjson.dumps(settled)})
    redis_db.xadd(USAGE_STREAM, {"kind": "final", "record": orjson.dumps(entry)})

    assert attribution_horizons(redis_db, now=2000.0) == {"gpu-a": 1000.0, "gpu-b": 1200.0}


def test_no_horizon_is_known_while_the_meter_is_far_behind(
    redis_db: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("metering.attribution.STREAM_SCAN_LIMIT", 3)
    for n in range(4):
        record = orjson.dumps({"backend": "gpu-a", "started_at": float(n)})
        redis_db.xadd(USAGE_STREAM, {"kind": "final", "record": record})

    assert attribution_horizons(redis_db, now=2000.0) is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_jobs_attribute_every_interval_exactly_once() -> None:
    calibrate()
    for n in range(200):
        usage(start=n * 0.5, first_token=n * 0.5 + 0.1, end=n * 0.5 + 3, prompt=100,
              completion=50 + n % 7)  # fmt: skip
    for n in range(100):
        interval(n, n + 1, energy_j=1000)
    done: list[int] = []

    def job() -> None:
        try:
            done.append(
                energy_attribute(horizons={}, now=at(3600), max_lag=LAG, batch_size=7).intervals
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=job) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(done) == 100
    stored = sum(r.energy_joules or 0 for r in UsageRecord.objects.all())
    idle = sum(i.idle_j or 0 for i in EnergyInterval.objects.all())
    assert stored + idle == pytest.approx(100 * 1000, rel=1e-12)


@pytest.mark.django_db
def test_efficiency_by_tier_and_idle_by_backend_add_up_to_what_was_measured() -> None:
    calibrate()
    usage(start=0, first_token=0, end=4, prompt=0, completion=300, tier="premium")
    usage(start=0, first_token=0, end=4, prompt=400, completion=100, tier="free")
    usage(start=30, first_token=30, end=31, completion=10, tier="free")  # not covered yet
    interval(0, 5, energy_j=900)  # 1 idle second: 100 J idle, 800 J attributed
    interval(5, 10, energy_j=500)
    attribute()
    interval(10, 20, energy_j=1000)  # measured, not attributed yet

    rows = energy_efficiency(since=at(0), until=at(3600))
    idle = energy_idle(since=at(0), until=at(3600))

    by_tier = {row.tier: row for row in rows}
    # Work: premium 300, free 0.25 * 400 + 100 = 200.
    assert by_tier["premium"].energy_j == pytest.approx(480)
    assert by_tier["premium"].tokens_per_joule == pytest.approx(300 / 480)
    assert by_tier["free"].joules_per_token == pytest.approx(320 / 500)
    assert by_tier["free"].output_tokens_per_joule == pytest.approx(100 / 320)
    assert (by_tier["free"].requests, by_tier["free"].unattributed) == (1, 1)
    [backend] = idle
    assert (backend.measured_j, backend.attributed_j, backend.pending_j) == (2400, 800, 1000)
    assert backend.idle_j == pytest.approx(600)
    assert backend.idle_share == pytest.approx(600 / 1400)
