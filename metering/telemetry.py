"""The telemetry collector: each backend's GPU energy and token counters, into PostgreSQL.

One run scrapes every enabled backend that has a `telemetry_url` (its DCGM exporter) and its
engine's `/metrics` (vLLM's token counters, engine steps and prefill times), all at once,
then per backend stores one `GpuSample` per GPU and the `EnergyInterval` since the backend's
previous scrape:

- energy is the sum over GPUs of counter deltas; a counter that went backwards (driver or
  backend restart) counts its new value, energy since the reset, and flags the interval
  (`counter_reset`: its energy is not exactly the interval's, see docs/energy.md), as does a
  GPU that appeared or went missing;
- a backend that cannot be read stores nothing, so the interval after it comes back spans the
  gap: intervals of a backend tile time, each starting where the previous one ended;
- only one scraper works on a backend at a time: a PostgreSQL advisory lock per backend is
  held from before the scrape until its rows commit, and a backend scraped less than
  `min_gap` seconds ago is skipped, so overlapping beat ticks write every interval once.

vLLM's raw counters have no table of their own; the last reading of each backend is kept in
Redis next to the time of the sample it belongs to, and a token delta is only computed when
that time is exactly the previous sample's (otherwise the interval's tokens are null).
"""

import asyncio
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import aiohttp
import orjson
import redis
from django.conf import settings
from django.db import connection, transaction

from fleet.models import Backend
from metering.models import EnergyInterval, GpuSample
from metering.prometheus import EngineTotals, GpuReading, dcgm_readings, vllm_totals
from metering.redis_clients import redis_connect

log = logging.getLogger(__name__)

# Raw samples are only needed to build the next interval; intervals are kept.
SAMPLE_RETENTION = timedelta(days=7)
# First key of this collector's advisory locks (the second is the backend's pk).
_LOCK_NAMESPACE = 0x7E1E
# Redis: live figures per backend (read by the gateway's /metrics), and the last vLLM
# counters per backend.
LIVE_KEY = "{energy}:live"
COUNTERS_KEY = "{energy}:engine_counters"

_N = TypeVar("_N", int, float)

_LAST_SAMPLES = """
SELECT s.backend, s.scraped_at, s.gpu_uuid, s.energy_mj
FROM unnest(%s::text[]) AS b(name)
CROSS JOIN LATERAL (
    SELECT max(scraped_at) AS at FROM metering_gpusample WHERE backend = b.name
) AS last
JOIN metering_gpusample AS s ON s.backend = b.name AND s.scraped_at = last.at
"""


class Outcome(StrEnum):
    WRITTEN = "written"  # samples and an interval stored
    FIRST = "first"  # the backend's first samples: the next scrape makes an interval
    DOWN = "down"  # telemetry unreadable: nothing stored
    BUSY = "busy"  # another scraper holds this backend
    RECENT = "recent"  # scraped less than min_gap ago


@dataclass(frozen=True)
class Scrape:
    """What one scrape of one backend read."""

    # Midpoint of the DCGM request, the best estimate of when the counters were read.
    at: datetime
    gpus: list[GpuReading]
    # None when the engine's /metrics could not be read.
    tokens: dict[str, EngineTotals] | None


@dataclass(frozen=True)
class LastSample:
    at: datetime
    energy_mj: dict[str, int]  # by GPU UUID


@dataclass(frozen=True)
class EnergyDelta:
    energy_mj: int
    # Some GPU's energy is not exactly this interval's (reset, appeared, went missing).
    inexact: bool


def counter_step(before: _N, now: _N) -> tuple[_N, bool]:
    """A counter's increase, and whether it went backwards: then it restarted from zero
    since `before`, and `now` is what it counted since (a lower bound of the increase)."""
    if now < before:
        return now, True
    return now - before, False


def energy_delta(
    *, previous: Mapping[str, int], current: Mapping[str, int], earlier: Mapping[str, int]
) -> EnergyDelta:
    """Energy (mJ) of a backend's GPUs between two scrapes, counted per GPU by UUID.

    `previous` and `current` are the counters at the interval's start and end; `earlier`
    holds older readings of GPUs that were missing at the start. Such a GPU's whole increase
    since its last reading lands in this interval; a GPU never seen before only sets its
    baseline (its counter runs since its driver loaded, maybe weeks: far from this interval).
    """
    total, inexact = 0, bool(previous.keys() - current.keys())
    for uuid, now in current.items():
        before = previous.get(uuid, earlier.get(uuid))
        if before is None:
            inexact = True
            continue
        step, went_back = counter_step(before, now)
        total += step
        inexact = inexact or went_back or uuid not in previous
    return EnergyDelta(energy_mj=total, inexact=inexact)


_ENGINE_FIELDS = tuple(field.name for field in fields(EngineTotals))
_ENGINE_ZERO = EngineTotals(prompt=0, generation=0, iterations=0, prefills=0, prefill_seconds=0.0)


def engine_delta(
    *, previous: Mapping[str, EngineTotals] | None, current: Mapping[str, EngineTotals] | None
) -> tuple[EngineTotals | None, bool]:
    """What the engine did between two scrapes, summed over its models (each figure None
    unless every model reports it both times), and whether a counter went backwards. A model
    that appears counts from zero (vLLM's counters start at zero when a model's series first
    appears); None when either side is unknown."""
    if previous is None or current is None:
        return None, False
    sums: dict[str, Any] = dict.fromkeys(_ENGINE_FIELDS, 0)
    went_back = False
    for model, now in current.items():
        before = previous.get(model, _ENGINE_ZERO)
        for name in _ENGINE_FIELDS:
            old, new = getattr(before, name), getattr(now, name)
            if sums[name] is None or old is None or new is None:
                sums[name] = None
                continue
            step, back = counter_step(old, new)
            sums[name] += step
            went_back = went_back or back
    return EngineTotals(**sums), went_back


def telemetry_scrape(
    *, timeout: float, min_gap: float, names: Collection[str] | None = None
) -> dict[str, Outcome]:
    """Scrape every enabled backend with a telemetry URL (or those named) and store what
    each one read. Safe to run concurrently and repeatedly."""
    found = Backend.objects.filter(enabled=True).exclude(telemetry_url="").order_by("pk")
    backends = list(found if names is None else found.filter(name__in=names))
    outcomes: dict[str, Outcome] = {}
    live: dict[str, dict[str, Any] | None] = {}
    client = redis_connect(settings.REDIS_URL)
    try:
        with transaction.atomic():
            mine = _locks_try(backends)
            outcomes |= {b.name: Outcome.BUSY for b in backends if b not in mine}
            last = _last_samples([b.name for b in mine])
            due = [b for b in mine if _is_due(last.get(b.name), min_gap)]
            outcomes |= {b.name: Outcome.RECENT for b in mine if b not in due}
            scrapes = asyncio.run(_scrape_all(due, aiohttp.ClientTimeout(total=timeout)))
            read: dict[str, Scrape] = {}
            for name, scrape in scrapes.items():
                if scrape is None:
                    outcomes[name], live[name] = Outcome.DOWN, None
                elif name in last and scrape.at <= last[name].at:
                    # The clock went back: an interval cannot end before it starts.
                    outcomes[name] = Outcome.RECENT
                else:
                    read[name] = scrape
            counters = _counters_read(client, list(read))
            intervals = {
                name: _interval_build(name, scrape, last[name], counters.get(name))
                for name, scrape in read.items()
                if name in last
            }
            _rows_write(read, intervals)
            _counters_write(client, read)
        for name, scrape in read.items():
            outcomes[name] = Outcome.WRITTEN if name in intervals else Outcome.FIRST
            live[name] = _figures(scrape, intervals.get(name))
        _live_write(client, live)
    finally:
        client.close()
    return outcomes


def _locks_try(backends: Sequence[Backend]) -> list[Backend]:
    """The backends whose advisory lock this transaction got (held until it ends)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM unnest(%s::bigint[]) AS id "
            "WHERE pg_try_advisory_xact_lock(%s, id::int)",
            [[b.pk for b in backends], _LOCK_NAMESPACE],
        )
        locked = {row[0] for row in cursor.fetchall()}
    return [b for b in backends if b.pk in locked]


def _last_samples(names: list[str]) -> dict[str, LastSample]:
    """Each backend's most recent scrape: its time and GPU counters."""
    found: dict[str, LastSample] = {}
    with connection.cursor() as cursor:
        cursor.execute(_LAST_SAMPLES, [names])
        for backend, at, uuid, energy_mj in cursor.fetchall():
            found.setdefault(backend, LastSample(at=at, energy_mj={})).energy_mj[uuid] = energy_mj
    return found


def _is_due(last: LastSample | None, min_gap: float) -> bool:
    return last is None or (_now() - last.at).total_seconds() >= min_gap


def _rows_write(scrapes: Mapping[str, Scrape], intervals: Mapping[str, EnergyInterval]) -> None:
    """All backends' samples and intervals in a few statements, whatever the fleet's size;
    conflicts are rows another run already wrote."""
    GpuSample.objects.bulk_create(
        [
            GpuSample(
                backend=name,
                gpu_uuid=gpu.uuid,
                gpu_index=gpu.index,
                scraped_at=scrape.at,
                energy_mj=gpu.energy_mj,
                power_w=gpu.power_w,
            )
            for name, scrape in scrapes.items()
            for gpu in scrape.gpus
        ],
        ignore_conflicts=True,
    )
    EnergyInterval.objects.bulk_create(list(intervals.values()), ignore_conflicts=True)
    GpuSample.objects.filter(
        backend__in=list(scrapes), scraped_at__lt=_now() - SAMPLE_RETENTION
    ).delete()


def _interval_build(
    name: str,
    scrape: Scrape,
    last: LastSample,
    counters: tuple[datetime, dict[str, EngineTotals]] | None,
) -> EnergyInterval:
    current = {gpu.uuid: gpu.energy_mj for gpu in scrape.gpus}
    energy = energy_delta(
        previous=last.energy_mj,
        current=current,
        earlier=_earlier_counters(name, current.keys() - last.energy_mj.keys(), last.at),
    )
    # Token counters read at another time than the previous sample would not match it.
    previous_tokens = counters[1] if counters is not None and counters[0] == last.at else None
    tokens, tokens_went_back = engine_delta(previous=previous_tokens, current=scrape.tokens)
    return EnergyInterval(
        backend=name,
        started_at=last.at,
        ended_at=scrape.at,
        energy_j=energy.energy_mj / 1000,
        gpus=len(scrape.gpus),
        prompt_tokens=tokens.prompt if tokens else None,
        generation_tokens=tokens.generation if tokens else None,
        iterations=tokens.iterations if tokens else None,
        engine_prefills=tokens.prefills if tokens else None,
        engine_prefill_seconds=tokens.prefill_seconds if tokens else None,
        counter_reset=energy.inexact or tokens_went_back,
    )


def _earlier_counters(name: str, uuids: Collection[str], before: datetime) -> dict[str, int]:
    """The last reading of each GPU that was missing from the previous scrape, if any."""
    found = {}
    for uuid in uuids:
        energy_mj = (
            GpuSample.objects.filter(backend=name, gpu_uuid=uuid, scraped_at__lt=before)
            .order_by("-scraped_at")
            .values_list("energy_mj", flat=True)
            .first()
        )
        if energy_mj is not None:
            found[uuid] = energy_mj
    return found


def _figures(scrape: Scrape, interval: EnergyInterval | None) -> dict[str, Any]:
    """Live figures. power_w is the DCGM gauge (what nvidia-smi shows); tokens per watt is
    tokens per joule of the interval's counter energy (= tokens/s over mean watts), which
    stays right when the simulator compresses time and its gauge does not."""
    tokens_per_s = tokens_per_watt = None
    if interval is not None and interval.generation_tokens is not None:
        seconds = (interval.ended_at - interval.started_at).total_seconds()
        tokens_per_s = interval.generation_tokens / seconds
        if interval.energy_j > 0:
            tokens_per_watt = interval.generation_tokens / interval.energy_j
    return {
        "power_w": sum(gpu.power_w for gpu in scrape.gpus),
        "tokens_per_s": tokens_per_s,
        "tokens_per_watt": tokens_per_watt,
        "at": scrape.at.timestamp(),
    }


async def _scrape_all(
    backends: Sequence[Backend], limit: aiohttp.ClientTimeout
) -> dict[str, Scrape | None]:
    """Scrape all backends at once: each backend's reading is taken at the tick, not after
    the slow ones before it, and a dead backend costs the run one timeout, not one each."""
    async with aiohttp.ClientSession(timeout=limit) as session:
        scrapes = await asyncio.gather(*(_scrape(session, b) for b in backends))
    return {b.name: scrape for b, scrape in zip(backends, scrapes, strict=True)}


async def _scrape(session: aiohttp.ClientSession, backend: Backend) -> Scrape | None:
    engine_url = backend.base_url + "/metrics"
    dcgm, engine = await asyncio.gather(
        _get(session, backend.telemetry_url),
        _get(session, engine_url),
        return_exceptions=True,
    )
    try:
        if isinstance(dcgm, BaseException):
            raise dcgm
        text, at = dcgm
        gpus = dcgm_readings(text)
        if not gpus:
            raise ValueError("no DCGM energy counter in the exporter's answer")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("telemetry unreadable", extra={"backend": backend.name, "error": repr(exc)})
        return None
    return Scrape(at=at, gpus=gpus, tokens=_tokens(backend.name, engine))


def _tokens(
    name: str, engine: tuple[str, datetime] | BaseException
) -> dict[str, EngineTotals] | None:
    try:
        if isinstance(engine, BaseException):
            raise engine
        # No vLLM counters at all (another engine, or not vLLM's names) is unknown, not zero.
        return vllm_totals(engine[0]) or None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("engine metrics unreadable", extra={"backend": name, "error": repr(exc)})
        return None


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[str, datetime]:
    """The body of a 200 answer, and the midpoint of the request in wall-clock time."""
    started, clock = time.time(), time.perf_counter()
    async with session.get(url) as response:
        response.raise_for_status()
        text = await response.text()
    midpoint = started + (time.perf_counter() - clock) / 2
    return text, datetime.fromtimestamp(midpoint, tz=UTC)


def _counters_read(
    client: redis.Redis, names: list[str]
) -> dict[str, tuple[datetime, dict[str, EngineTotals]]]:
    if not names:
        return {}
    try:
        values = client.hmget(COUNTERS_KEY, names)
    except redis.RedisError:
        log.warning("Redis unavailable: token deltas unknown this run", exc_info=True)
        return {}
    found = {}
    for name, value in zip(names, values, strict=True):
        if value is not None:
            stored = orjson.loads(value)
            # Readings stored by an earlier version have fewer figures.
            totals = {m: EngineTotals(*figures) for m, figures in stored["models"].items()}
            found[name] = (datetime.fromisoformat(stored["at"]), totals)
    return found


def _counters_write(client: redis.Redis, scrapes: Mapping[str, Scrape]) -> None:
    """Remember each engine's counters with its sample's time. Written before the samples
    commit: if the commit fails, the times differ and the next delta is left unknown."""
    try:
        pipe = client.pipeline(transaction=False)
        for name, scrape in scrapes.items():
            if scrape.tokens is None:
                pipe.hdel(COUNTERS_KEY, name)
                continue
            models = {m: astuple(t) for m, t in scrape.tokens.items()}
            stored = orjson.dumps({"at": scrape.at.isoformat(), "models": models})
            pipe.hset(COUNTERS_KEY, name, stored)
        pipe.execute()
    except redis.RedisError:
        log.warning("Redis unavailable: the next token deltas are unknown", exc_info=True)


def _live_write(client: redis.Redis, live: Mapping[str, dict[str, Any] | None]) -> None:
    """A backend that could not be read loses its figures: no reading is not zero watts."""
    try:
        pipe = client.pipeline(transaction=False)
        for name, figures in live.items():
            if figures is None:
                pipe.hdel(LIVE_KEY, name)
            else:
                pipe.hset(LIVE_KEY, name, orjson.dumps(figures))
        pipe.execute()
    except redis.RedisError:
        log.warning("Redis unavailable: live energy figures not updated", exc_info=True)


def _now() -> datetime:
    return datetime.now(tz=UTC)
