"""The simulated GPUs in NVIDIA dcgm-exporter's Prometheus text, as served at GET /dcgm/metrics.

Rendered by hand to match dcgm-exporter byte for byte in shape: its HELP texts, its label set and
order, watts with six decimals, and the energy counter in integer millijoules without the
`_total` suffix that prometheus_client would add.
"""

from __future__ import annotations

from collections.abc import Sequence

from simulator.power import DRIVER_VERSION, GPU_MODEL_NAME, GpuReading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
POWER = "DCGM_FI_DEV_POWER_USAGE"
ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(reading: GpuReading, hostname: str) -> str:
    gpu = reading.gpu
    pairs = (
        ("gpu", str(gpu.index)),
        ("UUID", gpu.uuid),
        ("pci_bus_id", gpu.pci_bus_id),
        ("device", f"nvidia{gpu.index}"),
        ("modelName", GPU_MODEL_NAME),
        ("Hostname", hostname),
        ("DCGM_FI_DRIVER_VERSION", DRIVER_VERSION),
    )
    return ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)


def render(readings: Sequence[GpuReading], hostname: str) -> bytes:
    labels = [_labels(reading, hostname) for reading in readings]
    lines = [f"# HELP {POWER} Power draw (in W).", f"# TYPE {POWER} gauge"]
    lines += [
        f"{POWER}{{{label}}} {reading.power_w:f}"
        for label, reading in zip(labels, readings, strict=True)
    ]
    lines += [
        f"# HELP {ENERGY} Total energy consumption since boot (in mJ).",
        f"# TYPE {ENERGY} counter",
    ]
    lines += [
        f"{ENERGY}{{{label}}} {reading.counter_mj}"
        for label, reading in zip(labels, readings, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()
