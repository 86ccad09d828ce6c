"""Reading what GPU servers expose in the Prometheus text format: DCGM exporter and vLLM.

Parsed with prometheus_client's own parser, so escaping, comments, timestamps and label
order are handled the way Prometheus handles them. Recent versions of that parser add
`_total` to the samples of a counter whose name lacks it (DCGM's energy counter), so a
sample is matched under either name.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

# DCGM exporter field names (dcgm-exporter default-counters.csv).
ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # counter, mJ since the driver loaded
POWER = "DCGM_FI_DEV_POWER_USAGE"  # gauge, W
# DCGM reports a field it could not read as a "blank" sentinel at the top of the type's range.
_INT64_BLANK = 0x7FFFFFFFFFFFFFF0
_FP64_BLANK = 140737488355328.0
# vLLM engine counters, one series per model_name.
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
# A histogram observed once per engine step: its count is the number of steps.
ITERATIONS = "vllm:iteration_tokens_total"
# A histogram observed when a request finishes: the seconds from its scheduling to its first
# token, by the engine's clock.
PREFILL_TIME = "vllm:request_prefill_time_seconds"


@dataclass(frozen=True)
class GpuReading:
    uuid: str
    index: int
    energy_mj: int
    # 0.0 when the exporter does not report power (it is shown live, never used for energy).
    power_w: float


@dataclass(frozen=True)
class EngineTotals:
    """A model's vLLM counters, totals since the engine started: tokens; engine steps; and
    the requests whose prefill time it observed, with those times' sum. The last three are
    None from an engine that does not export them."""

    prompt: int
    generation: int
    iterations: int | None = None
    prefills: int | None = None
    prefill_seconds: float | None = None


def dcgm_readings(text: str) -> list[GpuReading]:
    """Each GPU's energy counter and power gauge, by UUID; GPUs without an energy reading
    are left out. Raises ValueError on text that is not the Prometheus format."""
    energy: dict[str, tuple[int, int]] = {}
    power: dict[str, float] = {}
    for sample in _samples(text, ENERGY, POWER):
        uuid = sample.labels.get("UUID") or sample.labels.get("uuid")
        if not uuid:
            continue
        if sample.name == POWER:
            if sample.value < _FP64_BLANK:
                power[uuid] = float(sample.value)
        elif sample.value < _INT64_BLANK:
            energy[uuid] = (int(sample.labels.get("gpu", "0")), round(sample.value))
    return [
        GpuReading(uuid=uuid, index=index, energy_mj=mj, power_w=power.get(uuid, 0.0))
        for uuid, (index, mj) in sorted(energy.items(), key=lambda item: item[1][0])
    ]


def vllm_totals(text: str) -> dict[str, EngineTotals]:
    """The engine's counters by model_name (EngineTotals). Raises ValueError on bad text."""
    found: dict[str, dict[str, float]] = {}
    names = (PROMPT_TOKENS, GENERATION_TOKENS, ITERATIONS + "_count", PREFILL_TIME + "_count")
    for sample in _samples(text, *names, PREFILL_TIME + "_sum"):
        found.setdefault(sample.labels.get("model_name", ""), {})[sample.name] = sample.value
    totals = {}
    for model, values in found.items():
        steps, prefills = values.get(ITERATIONS + "_count"), values.get(PREFILL_TIME + "_count")
        totals[model] = EngineTotals(
            prompt=round(values.get(PROMPT_TOKENS, 0)),
            generation=round(values.get(GENERATION_TOKENS, 0)),
            iterations=None if steps is None else round(steps),
            prefills=None if prefills is None else round(prefills),
            prefill_seconds=values.get(PREFILL_TIME + "_sum"),
        )
    return totals


def _samples(text: str, *names: str) -> Iterator[Sample]:
    """Samples named one of `names`, or one of them plus `_total` (see the module's note).

    Only the lines that can belong to those metrics go to the parser: exporters serve dozens
    of other fields (a vLLM page is mostly histograms), and parsing is the scrape's main cost.
    """
    wanted = {name: name for name in names} | {name + "_total": name for name in names}
    # A histogram's _count and _sum come with its family's HELP and TYPE lines.
    families = {name.removesuffix("_count").removesuffix("_sum") for name in names}
    prefixes = tuple(f"{lead}{name}" for name in families for lead in ("", "# HELP ", "# TYPE "))
    lines = [line for line in text.splitlines() if line.startswith(prefixes)]
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            name = wanted.get(sample.name)
            if name is not None:
                yield sample._replace(name=name)
