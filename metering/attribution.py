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

# Fewer intervals than this cannot pin five coefficients down, and a fit that explains less
# of the variance than this says the model does not describe the backend (or its telemetry is
# broken): either way the last calibration (or none) stays in force.
MIN_INTERVALS = 20
MIN_R_SQUARED = 0.9
OUTLIER_SIGMAS = 4.0
# Requests with a first token needed to trust the prefill rate (seconds per prompt token).
MIN_PREFILL_SAMPLES = 10
# A usage stream longer than this means the meter is far behind: only intervals past the
# maximum lag are attributed until it catches up.
STREAM_SCAN_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class Coefficients:
    """A backend's energy model (see EnergyCalibration). Watts are joules per wall-clock
    second for the whole backend, all its GPUs together."""

    idle_watts: float
    prefill_j_per_token: float
    prefill_j_per_request: float
    decode_watts: float
    decode_j_per_token: float
    # When prompts are computed, and so when an answer that was not streamed had its first
    # token (see EnergyCalibration).
    ttft_seconds: float = 0.0
    ttft_seconds_per_token: float = 0.0
    prefill_seconds: float = 0.0

    @classmethod
    def of(cls, calibration: EnergyCalibration) -> "Coefficients":
        return cls(**{name: getattr(calibration, name) for name in cls.__slots__})

    def usable(self) -> bool:
        """Non-negative, and pricing both prefill and decode: else some work would get none
        of the energy it used."""
        return (
            min(asdict(self).values()) >= 0
            and self.prefill_j_per_token + self.prefill_j_per_request > 0
            and self.decode_watts + self.decode_j_per_token > 0
        )


@dataclass(frozen=True, slots=True)
class Timing:
    """A backend's time to first token after the queue (fixed + per uncached prompt token)
    and how much of the fixed part a prefill pass holds the GPUs."""

    seconds: float = 0.0
    seconds_per_token: float = 0.0
    prefill_seconds: float = 0.0

    def pass_seconds(self, fit: "Fit") -> float:
        """The GPU time of a prefill pass besides its tokens', from a fit that did not know it.

        Such a fit prices a pass only beyond the decode power its time was taken from:
        prefill_j_per_request = (prefill watts - decode_watts) x pass seconds, where the
        prefill watts are prefill_j_per_token / seconds_per_token.
        """
        c = fit.coefficients
        if self.seconds_per_token <= 0:
            return 0.0
        spare = c.prefill_j_per_token / self.seconds_per_token - c.decode_watts
        return min(c.prefill_j_per_request / spare, self.seconds) if spare > 0 else 0.0


@dataclass(frozen=True, slots=True)
class IntervalWork:
    """One interval's sums of the work components over its requests, and its energy."""

    idle_seconds: float
    prefill_tokens: float
    prefills: float
    decode_seconds: float
    decode_tokens: float
    energy_j: float


@dataclass(frozen=True, slots=True)
class Fit:
    coefficients: Coefficients
    intervals: int
    r_squared: float


@dataclass(frozen=True, slots=True)
class CalibrationPolicy:
    """Which intervals a fit uses: those of the last `lookback`, with the requests that
    started up to `max_lag` before them (longer ones are left out, as in attribution)."""

    lookback: timedelta
    max_lag: timedelta

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


def calibration_fit(intervals: Sequence[IntervalWork], *, timing: Timing) -> Fit | None:
    """Non-negative least squares of interval energy on the work components.

    Intervals the first fit cannot explain (residual beyond OUTLIER_SIGMAS robust standard
    deviations: a stalled backend, a scrape that read its counters late) are left out and the
    fit is done again. `timing` (the backend's time to first token, from the ledger) is stored
    with the model: attribution needs it to place prompt computations in time. None when the
    data cannot support a usable model.
    """
    if len(intervals) < MIN_INTERVALS:
        return None
    design = np.array(
        [
            (w.idle_seconds, w.prefill_tokens, w.prefills, w.decode_seconds, w.decode_tokens)
            for w in intervals
        ]
    )
    energy = np.array([w.energy_j for w in intervals])
    solution = _nnls(design, energy)
    residual = energy - design @ solution
    spread = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    # The floor keeps an exact fit's rounding noise from counting as outliers.
    kept = np.abs(residual) <= max(OUTLIER_SIGMAS * spread, 1e-9 * float(np.abs(energy).max()))
    design, energy = design[kept], energy[kept]
    if len(energy) < MIN_INTERVALS:
        return None
    solution = _nnls(design, energy)
    idle, per_token, per_request, decode_watts, decode_per_token = (float(c) for c in solution)
    coefficients = Coefficients(
        idle,
        per_token,
        per_request,
        decode_watts,
        decode_per_token,
        ttft_seconds=timing.seconds,
        ttft_seconds_per_token=timing.seconds_per_token,
        prefill_seconds=timing.prefill_seconds,
    )
    total = float(np.sum((energy - energy.mean()) ** 2))
    if not coefficients.usable() or total == 0:
        return None
    r_squared = 1 - float(np.sum((energy - design @ solution) ** 2)) / total
    if r_squared < MIN_R_SQUARED:
        return None
    return Fit(coefficients, len(energy), r_squared)


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
        span = _records_span(cursor, ids, policy.max_lag)
        cursor.execute(_PREFILL_RATE, {"backend": backend, **span})
        seconds, seconds_per_token, samples = cursor.fetchone()
        timing = Timing(seconds, seconds_per_token) if samples >= MIN_PREFILL_SAMPLES else Timing()
        fit = calibration_fit(_intervals_work(cursor, ids, backend, span, timing), timing=timing)
        # Knowing how long a pass holds the GPUs, the decoders no longer get that time and
        # the pass is priced whole: fit again with it.
        if fit is not None and (pass_seconds := timing.pass_seconds(fit)) > 0:
            timing = replace(timing, prefill_seconds=pass_seconds)
            work = _intervals_work(cursor, ids, backend, span, timing)
            fit = calibration_fit(work, timing=timing) or fit
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


def _intervals_work(
    cursor: CursorWrapper, ids: list[int], backend: str, span: dict[str, Any], timing: Timing
) -> list[IntervalWork]:
    """Each interval's work components summed over its requests, for the fit."""
    models: dict[str, Any] = {
        "backends": [backend],
        "ttft_seconds": [timing.seconds],
        "ttft_seconds_per_token": [timing.seconds_per_token],
        "prefill_seconds": [timing.prefill_seconds],
    }
    _work_build(cursor, {**span, **models, "ids": ids})
    cursor.execute(_CALIBRATION_INTERVALS, {"ids": ids})
    intervals = [IntervalWork(*(float(v) for v in row)) for row in cursor.fetchall()]
    cursor.execute("DROP TABLE energy_work")
    return intervals


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
