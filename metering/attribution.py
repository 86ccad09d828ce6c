"""Energy attribution (promise P5): each backend's measured energy split between its requests.

The collector (metering/telemetry.py) turns GPU counters into EnergyInterval rows: the joules a
backend used between two scrapes. This module fits each backend's energy model to those
intervals and the usage ledger, and splits every interval's energy into an idle part and the
shares of the requests active in it, written to their usage records. docs/energy.md describes
the model, the method, its definitions and its error sources.
"""

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from scipy.optimize import nnls

from metering.events import journal_shards
from metering.models import EnergyCalibration
from metering.redis_clients import redis_connect

log = logging.getLogger(__name__)

_SQL = Path(__file__).parent / "sql"
_CLAIM = (_SQL / "energy_claim.sql").read_text()
_WORK = (_SQL / "energy_work.sql").read_text()
_PRICE = (_SQL / "energy_price.sql").read_text()
_SPLIT = (_SQL / "energy_split.sql").read_text()
_LOCK_RECORDS = (_SQL / "energy_lock_records.sql").read_text()
_ADD_RECORDS = (_SQL / "energy_add_records.sql").read_text()
_CALIBRATION_INTERVALS = (_SQL / "energy_calibration_intervals.sql").read_text()
_PREFILL_RATE = (_SQL / "energy_prefill_rate.sql").read_text()
_PREFILL_TIMES = (_SQL / "energy_prefill_times.sql").read_text()
_PREFILL_PROMPTS = (_SQL / "energy_prefill_prompts.sql").read_text()

# Fewer intervals than this cannot pin five coefficients down, and a fit that explains less
# of the variance than this says the model does not describe the backend (or its telemetry is
# broken): either way the last calibration (or none) stays in force.
MIN_INTERVALS = 20
MIN_R_SQUARED = 0.9
# A step-time line must explain the busy seconds to this relative error (root mean square of
# the residuals over that of the busy seconds). Not R²: a backend busy all the time has
# intervals of nearly equal busy seconds, whose small variance an exact line explains poorly.
MAX_STEP_TIME_ERROR = 0.05
OUTLIER_SIGMAS = 4.0
# With the engine's timing measured, the prefill and the decode energy a first fit prices
# must be known to this relative standard error: a fit on a few minutes of data can be
# several percent off, and requests keep what they were attributed with it.
MAX_PRICE_ERROR = 0.02
# Requests with a first token needed to trust the prefill rate (seconds per prompt token).
MIN_PREFILL_SAMPLES = 10
# A usage stream longer than this means the meter is far behind: only intervals past the
# maximum lag are attributed until it catches up.
STREAM_SCAN_LIMIT = 20_000
# The batch sizes (sequences decoding together) at which a decode power curve is given:
# linear in between, flat after the last (energy_work.sql weighs decode time by them).
BATCH_KNOTS = tuple(2**j for j in range(9))


@dataclass(frozen=True, slots=True)
class Coefficients:
    """A backend's energy model (see EnergyCalibration). Watts are joules per wall-clock
    second for the whole backend, all its GPUs together."""

    idle_watts: float
    prefill_j_per_token: float
    prefill_j_per_request: float
    # Decode power at 1, 2, 4, ... sequences (BATCH_KNOTS): see decode_power.
    decode_watts: tuple[float, ...]
    decode_j_per_token: float
    # When prompts are computed, and so when an answer that was not streamed had its first
    # token (see EnergyCalibration).
    ttft_seconds: float = 0.0
    ttft_seconds_per_token: float = 0.0
    prefill_seconds: float = 0.0
    # A decode step's time over n sequences: decode_step_seconds + n * the per-sequence
    # seconds (0: not known), which sizes a request's decode time by its output.
    decode_step_seconds: float = 0.0
    decode_step_seconds_per_sequence: float = 0.0

    @classmethod
    def of(cls, calibration: EnergyCalibration) -> "Coefficients":
        fields = {name: getattr(calibration, name) for name in cls.__slots__}
        return cls(**{**fields, "decode_watts": tuple(calibration.decode_watts)})

    def decode_curve(self) -> tuple[float, ...]:
        """The decode power at every one of BATCH_KNOTS, the last value given repeated."""
        watts = self.decode_watts[: len(BATCH_KNOTS)]
        return watts + watts[-1:] * (len(BATCH_KNOTS) - len(watts))

    def decode_power(self, batch: float) -> float:
        """Watts while `batch` sequences decode together, shared equally by them: linear
        between the knots, flat after the last one given (and below one sequence)."""
        return float(np.interp(batch, BATCH_KNOTS, self.decode_curve()))

    def usable(self) -> bool:
        """Non-negative, and pricing both prefill and decode: else some work would get none
        of the energy it used."""
        scalars = [value for name, value in asdict(self).items() if name != "decode_watts"]
        return (
            len(self.decode_watts) > 0
            and min(*scalars, *self.decode_watts) >= 0
            and self.prefill_j_per_token + self.prefill_j_per_request > 0
            and max(self.decode_watts) + self.decode_j_per_token > 0
        )


@dataclass(frozen=True, slots=True)
class Timing:
    """A backend's time to first token after the queue (fixed + per uncached prompt token)
    and how much of the fixed part a prefill pass holds the GPUs. `measured`: the seconds a
    pass and a prompt token take were measured from the engine's reports (measured_timing),
    so prefill energy is their time at one power."""

    seconds: float = 0.0
    seconds_per_token: float = 0.0
    prefill_seconds: float = 0.0
    measured: bool = False
    # A decode step's time: fixed and per sequence decoding (measured too; 0 when not).
    step_seconds: float = 0.0
    step_seconds_per_sequence: float = 0.0

    def pass_seconds(self, fit: "Fit") -> float:
        """The GPU time of a prefill pass besides its tokens', from a fit that did not know it.

        Such a fit prices a pass only beyond the decode power its time was taken from:
        prefill_j_per_request = (prefill watts - decode power) x pass seconds, where the
        prefill watts are prefill_j_per_token / seconds_per_token (the decode power of one
        sequence: the least it can have been).
        """
        c = fit.coefficients
        if self.seconds_per_token <= 0:
            return 0.0
        spare = c.prefill_j_per_token / self.seconds_per_token - c.decode_power(1)
        return min(c.prefill_j_per_request / spare, self.seconds) if spare > 0 else 0.0


@dataclass(frozen=True, slots=True)
class IntervalWork:
    """One interval's sums of the work components over its requests, its energy, its length
    and the engine's steps in it (None when the engine does not report them). Decode seconds
    are by batch knot (see energy_work.sql): element j holds the seconds decoded at or near
    BATCH_KNOTS[j] sequences."""

    idle_seconds: float
    prefill_tokens: float
    prefills: float
    decode_seconds: tuple[float, ...]
    decode_tokens: float
    energy_j: float
    seconds: float = 0.0
    iterations: float | None = None


@dataclass(frozen=True, slots=True)
class Fit:
    coefficients: Coefficients
    intervals: int
    r_squared: float


@dataclass(frozen=True, slots=True)
class CalibrationPolicy:
    """Which intervals a fit uses: those of the last `lookback`, with the requests that
    started up to `max_lag` before them (longer ones are left out, as in attribution). A
    backend with less than `lookback` of telemetry waits for a fit whose prices are known to
    `price_error` (see MAX_PRICE_ERROR; None: any usable fit will do)."""

    lookback: timedelta
    max_lag: timedelta
    price_error: float | None = MAX_PRICE_ERROR

    @classmethod
    def from_settings(cls) -> "CalibrationPolicy":
        return cls(
            lookback=timedelta(hours=1),
            max_lag=timedelta(seconds=settings.METERING.attribution_max_lag_seconds),
        )


@dataclass(slots=True)
class Attributed:
    """What one run of the attribution job did."""

    intervals: int = 0
    requests: int = 0
    measured_j: float = 0.0
    attributed_j: float = 0.0
    idle_j: float = 0.0


# Calibration -------------------------------------------------------------------------------


def calibration_fit(
    intervals: Sequence[IntervalWork], *, timing: Timing, max_price_error: float | None = None
) -> Fit | None:
    """Non-negative least squares of interval energy on the work components.

    With a measured timing, prefill is one term: its seconds (a pass's plus its tokens') at
    one power, which the fit cannot trade between a pass and a token, and decode is its
    seconds at a power that depends on the batch; otherwise both prefill prices are fitted,
    and a price per output token besides. The decode power is a curve through BATCH_KNOTS up
    to the largest batch seen (flat after it), rising and flattening: its slope between two
    knots is never negative nor more than the one before it (non-negative coefficients on
    a constant and on min(batch, knot) - 1 for each knot above one). Intervals the first fit
    cannot explain (residual beyond OUTLIER_SIGMAS robust standard deviations: a stalled
    backend, a scrape that read its counters late) are left out and the fit is done again.
    `timing` (the backend's time to first token, from the ledger) is stored with the model:
    attribution needs it to place prompt computations in time. None when the data cannot
    support a usable model.
    """
    if len(intervals) < MIN_INTERVALS:
        return None
    top = max((j for w in intervals for j, s in enumerate(w.decode_seconds) if s > 0), default=0)
    design, energy = _inliers(
        np.array([calibration_terms(w, timing, top) for w in intervals]),
        np.array([w.energy_j for w in intervals]),
    )
    if len(energy) < MIN_INTERVALS:
        return None
    solution = _nnls(design, energy)
    if timing.measured:
        idle, prefill_watts, *decode = (float(c) for c in solution)
        per_token = prefill_watts * timing.seconds_per_token
        per_request = prefill_watts * timing.prefill_seconds
        decode_per_token = 0.0
    else:
        idle, per_token, per_request, decode_per_token, *decode = (float(c) for c in solution)
    coefficients = Coefficients(
        idle,
        per_token,
        per_request,
        tuple(float(w) for w in _hinges(top) @ np.array(decode)),
        decode_per_token,
        ttft_seconds=timing.seconds,
        ttft_seconds_per_token=timing.seconds_per_token,
        prefill_seconds=timing.prefill_seconds,
        decode_step_seconds=timing.step_seconds,
        decode_step_seconds_per_sequence=timing.step_seconds_per_sequence,
    )
    if not coefficients.usable():
        return None
    r_squared = _r_squared(energy, design @ solution)
    if r_squared < MIN_R_SQUARED:
        return None
    if (
        timing.measured
        and max_price_error is not None
        and max(_price_errors(design, energy, solution)) > max_price_error
    ):
        return None
    return Fit(coefficients, len(energy), r_squared)


def _price_errors(design: Any, target: Any, solution: Any) -> tuple[float, float]:
    """The relative standard errors of the prefill and of the decode energy a measured fit
    prices the intervals' work at (least squares over the terms it kept positive). Decode's
    terms trade off against each other; what they price together is what counts."""
    active = solution > 0
    if len(target) <= active.sum() or not active[1]:
        return 0.0, 0.0
    x = design[:, active]
    residual = target - x @ solution[active]
    covariance = np.zeros((len(solution), len(solution)))
    variance = float(residual @ residual) / (len(target) - int(active.sum()))
    covariance[np.ix_(active, active)] = variance * np.linalg.pinv(x.T @ x)
    totals = design.sum(axis=0)
    prefill, decode = np.zeros(len(solution)), np.zeros(len(solution))
    prefill[1], decode[2:] = totals[1], totals[2:]
    prefill_j, decode_j = float(prefill @ solution), float(decode @ solution)
    return (
        float(np.sqrt(prefill @ covariance @ prefill)) / prefill_j if prefill_j else 0.0,
        float(np.sqrt(decode @ covariance @ decode)) / decode_j if decode_j else 0.0,
    )


def calibration_terms(w: IntervalWork, timing: Timing, top: int) -> tuple[float, ...]:
    """What the fit's coefficients multiply in one interval, with the decode power curve's
    knots up to BATCH_KNOTS[top]."""
    seconds = np.zeros(top + 1)
    given = w.decode_seconds[: top + 1]
    seconds[: len(given)] = given
    decode = tuple(float(c) for c in seconds @ _hinges(top))
    if timing.measured:
        prefill_seconds = (
            timing.prefill_seconds * w.prefills + timing.seconds_per_token * w.prefill_tokens
        )
        return (w.idle_seconds, prefill_seconds, *decode)
    return (w.idle_seconds, w.prefill_tokens, w.prefills, w.decode_tokens, *decode)


@cache
def _hinges(top: int) -> Any:
    """Row j: the decode curve's basis functions at BATCH_KNOTS[j], for knots up to `top`:
    a constant, then min(batch, knot) - 1 for each knot above one. Seconds by knot times it
    are the fit's decode columns; it times the fitted coefficients is the curve."""
    knots = BATCH_KNOTS[: top + 1]
    return np.array([[1.0] + [min(size, knot) - 1.0 for knot in knots[1:]] for size in knots])


@dataclass(frozen=True, slots=True)
class StepTime:
    """What an engine step takes, in seconds: a fixed time, plus a prefill pass's fixed time
    for each prompt computed in it, plus each prompt token's and each output token's time."""

    fixed: float
    per_pass: float
    per_prompt_token: float
    per_output_token: float


def step_time_fit(intervals: Sequence[IntervalWork]) -> StepTime | None:
    """An engine runs one step after another while it has work, so the seconds it was busy
    in an interval are StepTime's line in four counts: the engine's steps (vLLM's
    iteration_tokens_total) and, from the ledger, the prompts computed, their tokens and the
    tokens output. Time has no curve in it, unlike power. None without the engine's steps in
    enough intervals, when the line is more than MAX_STEP_TIME_ERROR off their busy time, or
    when it gives a step no time of its own (the steps counted do not explain it)."""
    known = [w for w in intervals if w.iterations is not None]
    if len(known) < MIN_INTERVALS:
        return None
    design = np.array(
        [(w.iterations, w.prefills, w.prefill_tokens, w.decode_tokens) for w in known]
    )
    busy = np.array([max(w.seconds - w.idle_seconds, 0.0) for w in known])
    solution = _nnls(design, busy)
    if solution[0] <= 0 or (
        np.linalg.norm(busy - design @ solution) > MAX_STEP_TIME_ERROR * np.linalg.norm(busy)
    ):
        return None
    return StepTime(*(float(c) for c in solution))


def _r_squared(target: Any, predicted: Any) -> float:
    """The share of the target's variance a fit explains; 0 when it does not vary."""
    total = float(np.sum((target - target.mean()) ** 2))
    return 1 - float(np.sum((target - predicted) ** 2)) / total if total else 0.0


def prefill_time_fit(rows: Sequence[tuple[int, float, float]]) -> tuple[float, float] | None:
    """The engine's prefill time of a request (scheduled to first token, by its own clock) as
    a line: (seconds besides its tokens', seconds per uncached prompt token), fitted on the
    intervals' (requests the engine timed, the sum of their times, the uncached prompt tokens
    of their steps from the ledger). None without enough intervals or a line with a positive
    slope."""
    if len(rows) < MIN_INTERVALS:
        return None
    design = np.array([(count, tokens) for count, _, tokens in rows], dtype=float)
    seconds = np.array([total for _, total, _ in rows], dtype=float)
    design, seconds = _inliers(design, seconds)
    if len(seconds) < MIN_INTERVALS:
        return None
    fixed, per_token = (float(c) for c in _nnls(design, seconds))
    return (fixed, per_token) if per_token > 0 else None


@dataclass(frozen=True, slots=True)
class Prompts:
    """A backend's requests that got a first token (energy_prefill_prompts.sql), as arrays of
    seconds since the epoch: when each ended, its uncached prompt tokens, when it reached the
    backend, its first token, and whether the gateway saw that (else it is the backend's usual
    time to first token)."""

    ended: Any
    tokens: Any
    arrived: Any
    first_token: Any
    timed: Any

    @classmethod
    def fetch(
        cls, cursor: CursorWrapper, backend: str, span: dict[str, Any], timing: Timing
    ) -> "Prompts":
        """The backend's requests in a fit's span (its records' started_at range); `timing`
        places the first token of an answer that was not streamed."""
        ttft = {"ttft_seconds": timing.seconds, "ttft_seconds_per_token": timing.seconds_per_token}
        cursor.execute(_PREFILL_PROMPTS, {"backend": backend, **span, **ttft})
        columns = list(zip(*cursor.fetchall(), strict=True)) or [()] * 5
        ended, tokens, arrived, first_token = (np.array(c, dtype=float) for c in columns[:4])
        return cls(ended, tokens, arrived, first_token, np.array(columns[4], dtype=bool))


def engine_prefill_times(
    intervals: Sequence[tuple[float, float, int, float]], prompts: Prompts
) -> tuple[float, float] | None:
    """prefill_time_fit on the engine's prefill times (per interval: its bounds, the requests
    timed, their sum) against the tokens of the steps that computed the prompts the ledger
    saw end in each interval. The engine times a prompt's prefill as its whole step, so
    besides its own tokens' time it holds those of the prompts admitted with it
    (`stepped_with`), which a prompt that arrived while a long one was computed waits for and
    then shares: counted as its own, a long prompt beside a chat lengthens the chat's time by
    tens of milliseconds (the pass of `bench.energy --backends 2`'s larger model came out
    2-6% long). Their steps are placed by a first line on each prompt's own tokens."""
    first = prefill_time_fit(_prefill_rows(intervals, prompts, prompts.tokens))
    if first is None:
        return None
    fixed, per_token = first
    together = stepped_with(prompts, fixed + per_token * prompts.tokens)
    return prefill_time_fit(_prefill_rows(intervals, prompts, prompts.tokens + together)) or first


def _prefill_rows(
    intervals: Sequence[tuple[float, float, int, float]], prompts: Prompts, tokens: Any
) -> list[tuple[int, float, float]]:
    """Per interval: the requests the engine timed, their prefill seconds, and `tokens` (one
    value per prompt) summed over the prompts that ended in it."""
    order = np.argsort(prompts.ended)
    ended, running = prompts.ended[order], np.concatenate(([0.0], np.cumsum(tokens[order])))
    rows = []
    for start, end, count, seconds in intervals:
        first, last = np.searchsorted(ended, (start, end))
        rows.append((count, seconds, float(running[last] - running[first])))
    return rows


def stepped_with(prompts: Prompts, seconds: Any) -> Any:
    """For each prompt, the uncached tokens of the other prompts computed in its engine step,
    as far as the ledger shows it. An engine admits the prompts that arrived while it ran a
    step into its next one; the steps that matter are those computing a long prompt (tens of
    milliseconds, where a decode step takes a few), which hold the GPUs for `seconds` (one
    value per prompt) before its first token, from its arrival at the earliest. The prompts
    that arrived while one was computed are taken to share the next step."""
    computed_from = np.maximum(prompts.arrived, prompts.first_token - seconds)
    order = np.argsort(computed_from)
    starts, ends = computed_from[order], prompts.first_token[order]
    # The computation that began last before each prompt arrived (a prompt's own begins at
    # its arrival or after it), if it was still going on.
    during = np.searchsorted(starts, prompts.arrived) - 1
    waited = (during >= 0) & (ends[np.maximum(during, 0)] > prompts.arrived)
    batch = np.bincount(during[waited], weights=prompts.tokens[waited], minlength=len(starts))
    return np.where(waited, batch[np.maximum(during, 0)] - prompts.tokens, 0.0)


def decoding_beside(prompts: Prompts, batch: float) -> tuple[float, float]:
    """At the first tokens the gateway saw: the share of prompts computed beside sequences
    decoding, and the mean number of those (0 where none). A prompt's engine step advanced
    them too, and a step with none runs no decode pass. A sequence decodes from its first
    token to its end; at one instant ends come first and first tokens last (a prompt does not
    decode beside itself, nor beside one computed with it). Without any first token seen:
    every prompt beside `batch` sequences (the engine's mean)."""
    probes = prompts.first_token[prompts.timed]
    if not len(probes):
        return 1.0, batch
    decoding = prompts.ended > prompts.first_token
    started = np.searchsorted(np.sort(prompts.first_token[decoding]), probes, side="left")
    ended = np.searchsorted(np.sort(prompts.ended[decoding]), probes, side="right")
    beside = started - ended
    return float(np.mean(beside > 0)), float(np.mean(beside))


def _inliers(design: Any, target: Any) -> tuple[Any, Any]:
    """The rows a first fit explains: residual within OUTLIER_SIGMAS robust standard
    deviations (the floor keeps an exact fit's rounding noise from counting as outliers)."""
    residual = target - design @ _nnls(design, target)
    spread = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    kept = np.abs(residual) <= max(OUTLIER_SIGMAS * spread, 1e-9 * float(np.abs(target).max()))
    return design[kept], target[kept]


def measured_timing(
    timing: Timing,
    steps: StepTime | None,
    prefill: tuple[float, float] | None,
    beside: tuple[float, float],
) -> Timing | None:
    """How long a prefill pass and a prompt token hold the GPUs, from the engine's reports.

    From its prefill times when it gives them: a request's prefill time is the step that
    computed its prompt, so besides its step's tokens' it holds the pass and, where sequences
    were decoding beside it, a decode step over them (the step line's fixed and output-token
    times), which is the decoders' work. `beside` is (the share of prompts computed beside
    decoding sequences, their mean number: decoding_beside). Otherwise the step line's own
    pass time. None when neither is known, or the pass comes out at no time.
    """
    if steps is None:
        return None
    if prefill is None:
        pass_seconds, per_token = steps.per_pass, steps.per_prompt_token
    else:
        fixed, per_token = prefill
        share, decoding = beside
        pass_seconds = fixed - (share * steps.fixed + steps.per_output_token * decoding)
    if pass_seconds <= 0 or per_token <= 0:
        return None
    return replace(
        timing,
        seconds_per_token=per_token,
        prefill_seconds=pass_seconds,
        measured=True,
        step_seconds=steps.fixed,
        step_seconds_per_sequence=steps.per_output_token,
    )


def _nnls(design: Any, energy: Any) -> Any:
    # Columns differ by orders of magnitude (seconds vs tokens); scaling each to unit norm
    # keeps the solver well conditioned. A column of zeros keeps scale 1 and gets 0.
    scale = np.linalg.norm(design, axis=0)
    scale[scale == 0] = 1.0
    solution, _ = nnls(design / scale, energy)
    return solution / scale


def energy_calibrate(
    *, backend: str, now: datetime, until: datetime, policy: CalibrationPolicy
) -> EnergyCalibration | None:
    """Fit the backend's model to its intervals that ended by `until` (those whose requests
    all have their records) and store it; None if it cannot be fitted.

    A configured calibration is staff's decision and is left in force: the fit is skipped
    until that row is deleted.
    """
    latest = energy_calibration_latest(backend=backend)
    if latest is not None and latest.source == EnergyCalibration.Source.CONFIGURED:
        return None
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM metering_energyinterval WHERE backend = %s AND started_at >= %s "
            "AND ended_at <= %s AND NOT counter_reset",
            [backend, now - policy.lookback, until],
        )
        ids = [row[0] for row in cursor.fetchall()]
        if len(ids) < MIN_INTERVALS:
            return None
        cursor.execute(
            "SELECT min(started_at) FROM metering_energyinterval WHERE backend = %s", [backend]
        )
        young = cursor.fetchone()[0] > now - policy.lookback
        fit = _fit(cursor, ids, backend, policy, policy.price_error if young else None)
    if fit is None:
        log.info("energy calibration kept", extra={"backend": backend, "intervals": len(ids)})
        return None
    return EnergyCalibration.objects.create(
        backend=backend,
        source=EnergyCalibration.Source.FITTED,
        fitted_at=now,
        intervals=fit.intervals,
        r_squared=fit.r_squared,
        **asdict(fit.coefficients),
    )


def _fit(
    cursor: CursorWrapper,
    ids: list[int],
    backend: str,
    policy: CalibrationPolicy,
    max_price_error: float | None,
) -> Fit | None:
    span = _records_span(cursor, ids, policy.max_lag)
    cursor.execute(_PREFILL_RATE, {"backend": backend, **span})
    seconds, seconds_per_token, samples = cursor.fetchone()
    timing = Timing(seconds, seconds_per_token) if samples >= MIN_PREFILL_SAMPLES else Timing()
    work = _intervals_work(cursor, ids, backend, span, timing)
    cursor.execute(_PREFILL_TIMES, {"ids": ids})
    engine = cursor.fetchall()
    prompts = Prompts.fetch(cursor, backend, span, timing)
    measured = measured_timing(
        timing,
        step_time_fit(work),
        engine_prefill_times(engine, prompts),
        decoding_beside(prompts, _batch(work)),
    )
    if measured is not None:
        # Passes placed in time as long as they last, prefill priced by its seconds.
        work = _intervals_work(cursor, ids, backend, span, measured)
        return calibration_fit(work, timing=measured, max_price_error=max_price_error)
    fit = calibration_fit(work, timing=timing)
    # Knowing how long a pass holds the GPUs, the decoders no longer get that time and the
    # pass is priced whole: fit again with it.
    if fit is not None and (pass_seconds := timing.pass_seconds(fit)) > 0:
        timing = replace(timing, prefill_seconds=pass_seconds)
        fit = (
            calibration_fit(_intervals_work(cursor, ids, backend, span, timing), timing=timing)
            or fit
        )
    return fit


def _intervals_work(
    cursor: CursorWrapper, ids: list[int], backend: str, span: dict[str, Any], timing: Timing
) -> list[IntervalWork]:
    """Each interval's work components summed over its requests, for the fit."""
    models: dict[str, Any] = {
        "backends": [backend],
        "ttft_seconds": [timing.seconds],
        "ttft_seconds_per_token": [timing.seconds_per_token],
        "prefill_seconds": [timing.prefill_seconds],
        "decode_step_seconds": [timing.step_seconds],
        "decode_step_seconds_per_sequence": [timing.step_seconds_per_sequence],
    }
    _work_build(cursor, {**span, **models, "ids": ids})
    cursor.execute(_CALIBRATION_INTERVALS, {"ids": ids})
    intervals = []
    for idle, tokens, prefills, decode_s, decode_tokens, energy, seconds, steps in cursor:
        intervals.append(
            IntervalWork(
                float(idle),
                float(tokens),
                float(prefills),
                tuple(decode_s),
                float(decode_tokens),
                float(energy),
                float(seconds),
                steps,
            )
        )
    cursor.execute("DROP TABLE energy_work")
    return intervals


def _batch(intervals: Sequence[IntervalWork]) -> float:
    """The mean number of sequences a step decoded, where the engine counted its steps."""
    known = [w for w in intervals if w.iterations]
    steps = sum(w.iterations or 0 for w in known)
    return sum(w.decode_tokens for w in known) / steps if steps else 0.0


def energy_calibration_configure(
    *, backend: str, coefficients: Coefficients, now: datetime
) -> EnergyCalibration:
    """Staff's own coefficients for a backend (e.g. from a lab measurement); they win until
    deleted, and the periodic fit leaves the backend alone meanwhile."""
    if not coefficients.usable():
        raise ValueError("coefficients must be non-negative and price prefill and decode")
    return EnergyCalibration.objects.create(
        backend=backend,
        source=EnergyCalibration.Source.CONFIGURED,
        fitted_at=now,
        **asdict(coefficients),
    )


def energy_calibration_latest(*, backend: str) -> EnergyCalibration | None:
    return EnergyCalibration.objects.filter(backend=backend).order_by("-fitted_at", "-id").first()


def energy_calibrations_fit(
    *, now: datetime, horizons: dict[str, float] | None, policy: CalibrationPolicy
) -> list[EnergyCalibration]:
    """Fit every backend that has intervals in the lookback; returns the new calibrations."""
    fitted = []
    for backend in _backends_with_intervals(since=now - policy.lookback):
        calibration = energy_calibrate(
            backend=backend, now=now, until=_horizon(horizons, backend, now), policy=policy
        )
        if calibration is not None:
            fitted.append(calibration)
    return fitted


def energy_calibrate_ready() -> int:
    """The scheduled job: refit every backend from its recent, complete intervals."""
    now, horizons = _horizons_read()
    return len(
        energy_calibrations_fit(
            now=now, horizons=horizons, policy=CalibrationPolicy.from_settings()
        )
    )


# Readiness ---------------------------------------------------------------------------------


def attribution_horizons(client: redis.Redis, *, now: float) -> dict[str, float] | None:
    """Per backend, the start of its earliest request that has no usage record yet.

    Such a request is either in flight (the gateway's journal holds it) or settled and
    waiting in the usage stream for the meter. An interval of the backend that ended by its
    horizon has every record it needs. Backends with no such request are absent: their
    horizon is `now`, taken before the reads. In each shard (a request stays in one) the
    journal is read before the stream, so a request settling in between is seen in one or
    the other. None when the meter is too far behind to scan a stream.
    """
    horizons: dict[str, float] = {}
    for shard in journal_shards(settings.METERING.shards):
        for raw in client.hvals(shard.entries):
            _earliest(horizons, orjson.loads(raw))
        if client.xlen(shard.stream) > STREAM_SCAN_LIMIT:
            return None
        events: Any = client.xrange(shard.stream, count=STREAM_SCAN_LIMIT)
        for _, fields in events:
            _earliest(horizons, orjson.loads(fields[b"record"]))
    return {backend: min(start, now) for backend, start in horizons.items()}


def _earliest(horizons: dict[str, float], entry: dict[str, Any]) -> None:
    backend, started_at = str(entry["backend"]), float(entry["started_at"])
    horizons[backend] = min(started_at, horizons.get(backend, started_at))


def _horizon(horizons: dict[str, float] | None, backend: str, now: datetime) -> datetime:
    if horizons is None:
        return datetime.min.replace(tzinfo=UTC)
    return datetime.fromtimestamp(horizons.get(backend, now.timestamp()), tz=UTC)


def _horizons_read() -> tuple[datetime, dict[str, float] | None]:
    client = redis_connect(settings.REDIS_URL)
    try:
        at = time.time()
        return datetime.fromtimestamp(at, tz=UTC), attribution_horizons(client, now=at)
    finally:
        client.close()


# Attribution -------------------------------------------------------------------------------


def energy_attribute(
    *,
    horizons: dict[str, float] | None,
    now: datetime,
    max_lag: timedelta,
    batch_size: int = 500,
    calibration: CalibrationPolicy | None = None,
) -> Attributed:
    """Attribute every ready interval, one transaction per batch; safe to run concurrently.

    `horizons` come from attribution_horizons (None: only intervals past the maximum lag).
    A backend without any calibration is fitted first when `calibration` says how; while
    none can be fitted or configured its intervals wait.
    """
    models = _coefficients(_pending_backends(), now=now, horizons=horizons, policy=calibration)
    result = Attributed()
    if not models:
        return result
    backends = sorted(models)
    claim: dict[str, Any] = {
        "backends": backends,
        "horizons": [_horizon(horizons, b, now) for b in backends],
        "stale": now - max_lag,
        "limit": batch_size,
    }
    prices: dict[str, Any] = {"backends": backends}
    for name in Coefficients.__slots__:
        prices[name] = [getattr(models[b], name) for b in backends]
    # One row per backend, each as long as BATCH_KNOTS: a two-dimensional array.
    prices["decode_watts"] = [list(models[b].decode_curve()) for b in backends]
    while _attribute_batch(claim, prices, max_lag, result):
        pass
    if result.intervals:
        log.info("energy attributed", extra=asdict(result))
    return result


def energy_attribute_ready() -> Attributed:
    """The scheduled job: attribute every interval whose usage records are all stored."""
    now, horizons = _horizons_read()
    policy = CalibrationPolicy.from_settings()
    return energy_attribute(horizons=horizons, now=now, max_lag=policy.max_lag, calibration=policy)


def _attribute_batch(
    claim: dict[str, Any],
    prices: dict[str, Any],
    max_lag: timedelta,
    result: Attributed,
) -> bool:
    """Claim one batch and attribute it in one transaction; False once nothing is ready."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CLAIM, claim)
        ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return False
        span = _records_span(cursor, ids, max_lag)
        _work_build(cursor, {**span, **prices, "ids": ids})
        cursor.execute(_PRICE, prices)
        cursor.execute(_SPLIT, {**prices, "ids": ids})
        for energy_j, idle_j, attributed_j, _ in cursor.fetchall():
            result.measured_j += energy_j
            result.idle_j += idle_j
            result.attributed_j += attributed_j
        cursor.execute(_LOCK_RECORDS, span)
        cursor.execute(_ADD_RECORDS, span)
        result.requests += cursor.rowcount
        result.intervals += len(ids)
        # ON COMMIT DROP alone would leave it in place when the caller's transaction goes on.
        cursor.execute("DROP TABLE energy_work")
    return True


def _work_build(cursor: CursorWrapper, params: dict[str, Any]) -> None:
    """Fill the temporary table energy_work (energy_work.sql) for the given intervals.

    The planner cannot estimate its time conditions and expects a row or two from each step;
    with nested loops over the steps' results the query would grow with the square of the
    records (minutes for a few thousand). Hash joins keep it linear.
    """
    cursor.execute("SET LOCAL enable_nestloop = off")
    cursor.execute(_WORK, params)
    cursor.execute("RESET enable_nestloop")


def _records_span(cursor: CursorWrapper, ids: list[int], max_lag: timedelta) -> dict[str, Any]:
    """The started_at range (the partitions) and ended_at bound of the usage records that can
    have been active in these intervals."""
    cursor.execute(
        "SELECT min(started_at), max(ended_at) FROM metering_energyinterval WHERE id = ANY(%s)",
        [ids],
    )
    first, last = cursor.fetchone()
    # Requests active in the intervals started before the last one ends and, unless they ran
    # longer than the maximum lag, after the first one starts minus that lag.
    return {"lower": first - max_lag, "upper": last, "after": first}


def _coefficients(
    backends: Iterable[str],
    *,
    now: datetime,
    horizons: dict[str, float] | None,
    policy: CalibrationPolicy | None,
) -> dict[str, Coefficients]:
    found = {}
    for backend in backends:
        calibration = energy_calibration_latest(backend=backend)
        if calibration is None and policy is not None:
            until = _horizon(horizons, backend, now)
            calibration = energy_calibrate(backend=backend, now=now, until=until, policy=policy)
        if calibration is None:
            log.warning("no energy calibration; intervals wait", extra={"backend": backend})
            continue
        found[backend] = Coefficients.of(calibration)
    return found


def _pending_backends() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT backend FROM metering_energyinterval WHERE attributed_at IS NULL"
        )
        return [row[0] for row in cursor.fetchall()]


def _backends_with_intervals(*, since: datetime) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT backend FROM metering_energyinterval WHERE started_at >= %s",
            [since],
        )
        return [row[0] for row in cursor.fetchall()]
