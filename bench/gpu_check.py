"""Optional check of the energy collector against a real NVIDIA GPU's counters.

    pip install -e '.[gpu]'     # nvidia-ml-py, the NVML bindings; only this check needs it
    python -m bench.gpu_check [--seconds 60] [--scrape 5] [--hz 20] [--dcgm URL]

Runs on a machine with NVIDIA GPUs and drivers; nothing else in the project depends on it.
Put the GPUs under whatever load you want to check (a vLLM server and its benchmark client,
say) while it runs; an idle GPU is a valid check too, just an easy one.

Three readings of the same energy, per GPU, over the run and per scrape interval:

- **counter**: NVML's total-energy counter (mJ since the driver loaded), read every
  `--scrape` seconds and turned into interval energy by the collector's own `energy_delta`
  (the reference; it is what DCGM exports as DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION);
- **power**: NVML's power gauge sampled at `--hz` and integrated (trapezoid). On A100/H100
  the gauge is a windowed average that sees only part of the time, so expect it to differ
  from the counter by a few percent on bursty loads; a large gap means the counter is wrong;
- **collector** (with `--dcgm URL`): the DCGM exporter's page as the collector scrapes it,
  parsed by `metering.prometheus.dcgm_readings` and differenced by `energy_delta`. Its
  intervals lag NVML's by up to the exporter's collection interval (`-c`, default 30 s in
  dcgm-exporter; run it with `-c 1000` for this check), so compare the totals.

It prints a table per GPU and the worst relative difference; it exits non-zero when the
collector's total (or, without `--dcgm`, the counter's) is more than `--tolerance` off.
"""

import argparse
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from metering.prometheus import dcgm_readings
from metering.telemetry import energy_delta


@dataclass
class Gpu:
    uuid: str
    name: str
    handle: Any
    counter_j: float = 0.0
    power_j: float = 0.0
    collector_j: float = 0.0
    intervals: list[tuple[float, float]] = field(default_factory=list)  # (counter, power) J


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--scrape", type=float, default=5.0, help="seconds between readings")
    parser.add_argument("--hz", type=float, default=20.0, help="power samples per second")
    parser.add_argument("--dcgm", default="", help="DCGM exporter URL, e.g. :9400/metrics")
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()
    try:
        import pynvml
    except ImportError:
        print("needs nvidia-ml-py: pip install -e '.[gpu]'", file=sys.stderr)
        return 2

    pynvml.nvmlInit()
    try:
        gpus = _gpus(pynvml)
        return _check(pynvml, gpus, args)
    finally:
        pynvml.nvmlShutdown()


def _gpus(pynvml: Any) -> list[Gpu]:
    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        gpus.append(
            Gpu(
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                handle=handle,
            )
        )
    return gpus


def _check(pynvml: Any, gpus: list[Gpu], args: argparse.Namespace) -> int:
    power = _PowerSampler(pynvml, gpus, args.hz)
    counters = _counters(pynvml, gpus)
    scraped = _scrape(args.dcgm) if args.dcgm else {}
    power.start()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        time.sleep(min(args.scrape, max(0.0, deadline - time.monotonic())))
        now = _counters(pynvml, gpus)
        integrated = power.take()
        for gpu in gpus:
            counter = energy_delta(previous=counters, current={gpu.uuid: now[gpu.uuid]}, earlier={})
            gpu.counter_j += counter.energy_mj / 1000
            gpu.power_j += integrated[gpu.uuid]
            gpu.intervals.append((counter.energy_mj / 1000, integrated[gpu.uuid]))
        counters = now
        if args.dcgm:
            later = _scrape(args.dcgm)
            for gpu in gpus:
                if gpu.uuid in later and gpu.uuid in scraped:
                    step = energy_delta(
                        previous={gpu.uuid: scraped[gpu.uuid]},
                        current={gpu.uuid: later[gpu.uuid]},
                        earlier={},
                    )
                    gpu.collector_j += step.energy_mj / 1000
            scraped = later
    power.stop()
    return _report(gpus, args)


def _counters(pynvml: Any, gpus: list[Gpu]) -> dict[str, int]:
    return {gpu.uuid: pynvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle) for gpu in gpus}


def _scrape(url: str) -> dict[str, int]:
    """The DCGM exporter's energy counters by UUID, read the way the collector reads them."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 -- the operator's URL
        text = response.read().decode()
    return {reading.uuid: reading.energy_mj for reading in dcgm_readings(text)}


class _PowerSampler(threading.Thread):
    """Integrates each GPU's power gauge (trapezoid) between calls to `take`."""

    def __init__(self, pynvml: Any, gpus: list[Gpu], hz: float) -> None:
        super().__init__(daemon=True)
        self._nvml, self._gpus, self._period = pynvml, gpus, 1.0 / hz
        self._lock = threading.Lock()
        self._joules = {gpu.uuid: 0.0 for gpu in gpus}
        self._last: dict[str, tuple[float, float]] = {}
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            at = time.monotonic()
            with self._lock:
                for gpu in self._gpus:
                    watts = self._nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000
                    if gpu.uuid in self._last:
                        then, before = self._last[gpu.uuid]
                        self._joules[gpu.uuid] += (at - then) * (watts + before) / 2
                    self._last[gpu.uuid] = (at, watts)
            self._stopping.wait(self._period)

    def take(self) -> dict[str, float]:
        with self._lock:
            taken, self._joules = self._joules, dict.fromkeys(self._joules, 0.0)
        return taken

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def _report(gpus: list[Gpu], args: argparse.Namespace) -> int:
    print(f"{len(gpus)} GPU(s), {args.seconds:.0f} s, readings every {args.scrape:g} s\n")
    header = f"{'gpu':<44} {'counter J':>11} {'power J':>11} {'power Δ':>8}"
    if args.dcgm:
        header += f" {'collector J':>12} {'coll. Δ':>8}"
    print(header)
    worst = 0.0
    for gpu in gpus:
        power_off = _off(gpu.power_j, gpu.counter_j)
        line = f"{gpu.name[:20] + ' ' + gpu.uuid[-22:]:<44} {gpu.counter_j:>11,.1f} "
        line += f"{gpu.power_j:>11,.1f} {power_off:>+8.1%}"
        if args.dcgm:
            collector_off = _off(gpu.collector_j, gpu.counter_j)
            line += f" {gpu.collector_j:>12,.1f} {collector_off:>+8.1%}"
            worst = max(worst, abs(collector_off))
        else:
            worst = max(worst, abs(power_off))
        print(line)
        offs = sorted(abs(_off(p, c)) for c, p in gpu.intervals if c > 0)
        if offs:
            p50, most = offs[len(offs) // 2], offs[-1]
            print(f"    per interval, |power - counter|: p50 {p50:.1%}, max {most:.1%}")
    what = "collector" if args.dcgm else "power gauge"
    print(f"\nworst {what} difference from the counter: {worst:.1%}", end=" ")
    print(f"(tolerance {args.tolerance:.0%})")
    return 0 if worst <= args.tolerance else 1


def _off(value: float, reference: float) -> float:
    return value / reference - 1 if reference else 0.0


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


if __name__ == "__main__":
    sys.exit(main())
