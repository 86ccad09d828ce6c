"""The simulated GPUs' power: energy counters as DCGM reports them, and each request's true share.

Power model (per GPU), from published figures for Llama-3.1-8B on one H100 under vLLM (ML.ENERGY
leaderboard): 110 W with the model loaded and idle; while decoding, a piecewise-linear curve of
the batch size through the measured 486 W at 8, 610 W at 64, 669 W at 128 and 691 W at 256
sequences (flat beyond 256). The batch-1 point, 300 W, is ours: the leaderboard does not list
it; it continues the curve's shape down to a memory-bound single sequence. A step that prefills
runs at the 700 W board limit for its prefill time, so its power moves from the decode curve
toward 700 W by the prefill share of the step:

    step joules = 700 W x prefill seconds + decode_watts(batch) x decode seconds

Energy is integrated in MODELLED time (durations before --speedup divides them): a step adds its
power times its modelled seconds; idle time adds 110 W times the wall seconds the engine waited
for work times the speedup (instant mode, speedup 0: times 1). The exported counters therefore
grow about `speedup` times faster than wall time, while watts and joules per token stay real.

Each model's engine runs on its own tensor-parallel group of `--gpus` GPUs (engine k owns GPUs
k*gpus .. k*gpus+gpus-1). Every GPU of a group draws the model's power times a fixed factor
within +-2% (the factors sum to the group size), as real GPUs of one group differ slightly.

The exported counters grow through a step, as a GPU's do: a reading mid-step includes the
part of the step's energy spent so far.

Ground truth: every joule belongs to exactly one request or to idle. A step's decode joules are
split among the sequences it decoded by their decode tokens, its prefill joules among the
sequences it prefilled by their uncached prompt tokens; an embedding request is priced as a
700 W prefill pass of its modelled duration. Requests are keyed by the x-request-id header the
caller sent, else by the simulator's own id; aborted requests keep what they used. So at any
moment: sum of requests + idle + the steps still running = sum over GPUs of their energy, to
float rounding.
"""

from __future__ import annotations

import time
import uuid
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from simulator.config import SimConfig
from simulator.engine import Engine, Sequence, Step

GPU_MODEL_NAME = "NVIDIA H100 80GB HBM3"
DRIVER_VERSION = "550.90.07"
_UUID_NAMESPACE = uuid.UUID("6f1c2d1e-5b8a-4d55-9a36-0c5e3a1f7b21")
# Offsets are drawn in +-1% and recentred per group, so every factor lies within +-2%.
_GPU_SPREAD = 0.01
# Instant mode has no step in progress to read; its gauge shows the last step this long.
_INSTANT_GAUGE_HOLD_S = 1.0


@dataclass(frozen=True, slots=True)
class PowerModel:
    """Watts of one GPU; see the module docstring for where the figures come from."""

    idle_w: float = 110.0
    max_w: float = 700.0
    # (sequences decoding together, watts), ascending.
    decode_curve: tuple[tuple[int, float], ...] = (
        (1, 300.0),
        (8, 486.0),
        (64, 610.0),
        (128, 669.0),
        (256, 691.0),
    )

    def decode_watts(self, batch: int) -> float:
        """Power while decoding `batch` sequences: linear between points, flat outside them."""
        curve = self.decode_curve
        if batch <= curve[0][0]:
            return curve[0][1]
        if batch >= curve[-1][0]:
            return curve[-1][1]
        upper = bisect_right([size for size, _ in curve], batch)
        (b0, w0), (b1, w1) = curve[upper - 1], curve[upper]
        return w0 + (w1 - w0) * (batch - b0) / (b1 - b0)

    def step_joules(self, step: Step) -> tuple[float, float]:
        """(prefill joules, decode joules) of one GPU for a step."""
        decode_j = self.decode_watts(step.decode_batch) * step.decode_s if step.decode_s else 0.0
        return self.max_w * step.prefill_s, decode_j

    def step_watts(self, step: Step) -> float:
        if step.duration_s <= 0:
            return self.idle_w
        prefill_j, decode_j = self.step_joules(step)
        return (prefill_j + decode_j) / step.duration_s


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    uuid: str
    pci_bus_id: str
    model: str  # the served model whose engine this GPU belongs to
    factor: float  # this GPU's draw relative to the power model; a group's factors sum to its size


@dataclass(frozen=True, slots=True)
class GpuReading:
    gpu: Gpu
    power_w: float
    energy_j: float  # true energy since start; never reset
    counter_mj: int  # as exported: integer millijoules since start or the last counter reset


def _gpu(name: str, seed: int, index: int) -> tuple[str, str, float]:
    gpu_uuid = uuid.uuid5(_UUID_NAMESPACE, f"{name}/{seed}/{index}")
    # A stable offset in [-spread, +spread] drawn from the UUID, recentred per group by the caller.
    offset = (gpu_uuid.int % 2001 - 1000) / 1000 * _GPU_SPREAD
    bus = 0x18 + index
    return f"GPU-{gpu_uuid}", f"00000000:{bus:02X}:00.0", offset


class TensorParallelGroup:
    """Engine observer: the GPUs one model's engine runs on, and the energy they used."""

    def __init__(
        self,
        *,
        engine: Engine,
        gpus: tuple[Gpu, ...],
        model: PowerModel,
        idle_rate: float,
        instant: bool,
        ledger: dict[str, float],
    ) -> None:
        self.engine = engine
        self.gpus = gpus
        self._model = model
        # Modelled seconds per wall second of idleness: the speedup, or 1 in instant mode.
        self._idle_rate = idle_rate
        self._instant = instant
        self._scale = sum(gpu.factor for gpu in gpus)
        self._ledger = ledger
        # Joules of one nominal GPU (factor 1) spent on work, i.e. not idle.
        self.busy_j = 0.0
        self._last_watts = model.idle_w
        self._last_step_at = float("-inf")

    def idle_j(self, now: float) -> float:
        """Idle joules of one nominal GPU up to `now`."""
        return self._model.idle_w * self._idle_rate * self.engine.idle_seconds(now)

    def running_j(self, now: float) -> float:
        """Joules of one nominal GPU spent so far on the step in progress: a GPU's energy
        counter grows through a step, not at its end (a long prefill lasts tens of ms). The
        step's requests are credited the whole of it when it ends."""
        step = self.engine.running_step
        if step is None or step.duration_s <= 0:
            return 0.0
        done = (now - step.started_at) * self._idle_rate / step.duration_s
        prefill_j, decode_j = self._model.step_joules(step)
        return (prefill_j + decode_j) * min(max(done, 0.0), 1.0)

    def watts(self, now: float) -> float:
        """Power of one nominal GPU now: the running step's, else idle unless work is pending."""
        step = self.engine.running_step
        if step is not None:
            return self._model.step_watts(step)
        if not self.engine.idle:
            # Between two steps of a busy engine.
            return self._last_watts
        if self._instant and now - self._last_step_at < _INSTANT_GAUGE_HOLD_S:
            return self._last_watts
        return self._model.idle_w

    def on_step(self, step: Step) -> None:
        prefill_j, decode_j = self._model.step_joules(step)
        self.busy_j += prefill_j + decode_j
        self._last_watts = self._model.step_watts(step)
        self._last_step_at = time.monotonic()
        self._credit(step, prefill_j * self._scale, decode_j * self._scale)

    def on_finish(self, seq: Sequence) -> None:
        pass

    def on_embedding(self, key: str, seconds: float) -> None:
        joules = self._model.max_w * seconds
        self.busy_j += joules
        self._ledger[key] = self._ledger.get(key, 0.0) + joules * self._scale

    def _credit(self, step: Step, prefill_j: float, decode_j: float) -> None:
        """Split a step's joules (all GPUs) among its sequences; the hot path of every step."""
        ledger = self._ledger
        per_decode = decode_j / step.decode_tokens if step.decode_tokens else 0.0
        if prefill_j and not step.prefill_tokens:
            # Only prompts with nothing to compute (empty ones) prefilled: share the pass evenly.
            self._credit_evenly(step, prefill_j)
            prefill_j = 0.0
        per_prefill = prefill_j / step.prefill_tokens if step.prefill_tokens else 0.0
        for seq, prefilled, decoded in step.work:
            key = seq.client_request_id or seq.request_id
            ledger[key] = ledger.get(key, 0.0) + prefilled * per_prefill + decoded * per_decode

    def _credit_evenly(self, step: Step, joules: float) -> None:
        # Sequences that decoded nothing in a step are the ones it admitted.
        admitted = [seq for seq, _, decoded in step.work if not decoded] or [
            seq for seq, _, _ in step.work
        ]
        share = joules / len(admitted)
        for seq in admitted:
            key = seq.client_request_id or seq.request_id
            self._ledger[key] = self._ledger.get(key, 0.0) + share


class Power:
    """Every GPU of one simulator: counters for /dcgm/metrics, ground truth for /_sim/energy."""

    def __init__(
        self, config: SimConfig, engines: Mapping[str, Engine], model: PowerModel | None = None
    ) -> None:
        self.model = model or PowerModel()
        self.hostname = config.name
        # request key -> joules over all GPUs; grows with the requests served (about 100 bytes
        # each), which a run of a few hundred thousand requests affords.
        self.requests: dict[str, float] = {}
        idle_rate = config.speedup if config.speedup > 0 else 1.0
        self.groups: dict[str, TensorParallelGroup] = {}
        for position, (name, engine) in enumerate(engines.items()):
            first = position * config.gpus
            drawn = [
                _gpu(config.name, config.seed, index) for index in range(first, first + config.gpus)
            ]
            mean = sum(offset for _, _, offset in drawn) / len(drawn)
            gpus = tuple(
                Gpu(first + rank, gpu_uuid, bus, name, 1.0 + offset - mean)
                for rank, (gpu_uuid, bus, offset) in enumerate(drawn)
            )
            group = TensorParallelGroup(
                engine=engine,
                gpus=gpus,
                model=self.model,
                idle_rate=idle_rate,
                instant=config.instant,
                ledger=self.requests,
            )
            engine.add_observer(group)
            self.groups[name] = group
        # Exported counter value at the last reset, per GPU index.
        self._offsets_mj: dict[int, int] = {}
        self.counter_resets = 0

    def on_embedding(self, model: str, key: str, seconds: float) -> None:
        self.groups[model].on_embedding(key, seconds)

    def readings(self, now: float | None = None) -> list[GpuReading]:
        """Every GPU's power, true energy and exported counter, all read at one instant."""
        now = time.monotonic() if now is None else now
        result = []
        for group in self.groups.values():
            nominal_j = group.busy_j + group.idle_j(now) + group.running_j(now)
            nominal_w = group.watts(now)
            for gpu in group.gpus:
                energy_j = nominal_j * gpu.factor
                counter = int(energy_j * 1000) - self._offsets_mj.get(gpu.index, 0)
                result.append(GpuReading(gpu, nominal_w * gpu.factor, energy_j, counter))
        return result

    def reset_counters(self) -> None:
        """Zero the exported counters, as a driver or DCGM restart would; ground truth stays."""
        for reading in self.readings():
            self._offsets_mj[reading.gpu.index] = int(reading.energy_j * 1000)
        self.counter_resets += 1

    def snapshot(self, ids: Iterable[str] | None = None) -> dict[str, Any]:
        """Ground truth as GET /_sim/energy serves it; `ids` limits the requests listed."""
        now = time.monotonic()
        readings = self.readings(now)
        idle_j = sum(
            group.idle_j(now) * gpu.factor for group in self.groups.values() for gpu in group.gpus
        )
        running_j = sum(
            group.running_j(now) * gpu.factor
            for group in self.groups.values()
            for gpu in group.gpus
        )
        if ids is None:
            requests = self.requests
        else:
            requests = {key: self.requests[key] for key in ids if key in self.requests}
        return {
            "total_j": sum(reading.energy_j for reading in readings),
            "idle_j": idle_j,
            # Spent on steps still running, credited to their requests when they end.
            "running_j": running_j,
            "gpus": [
                {
                    "index": reading.gpu.index,
                    "uuid": reading.gpu.uuid,
                    "model": reading.gpu.model,
                    "energy_j": reading.energy_j,
                    "power_w": reading.power_w,
                    "counter_mj": reading.counter_mj,
                }
                for reading in readings
            ],
            "counter_resets": self.counter_resets,
            "requests": requests,
        }
