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


@dataclass(frozen=True)
class GpuReading:
    uuid: str
    index: int
    energy_mj: int
    # 0.0 when the exporter does not report power (it is shown live, never used for energy).
    power_w: float


@dataclass(frozen=True)
class TokenTotals:
    """A model's vLLM token counters: totals since the engine started."""

    prompt: int
    generation: int


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


def vllm_token_totals(text: str) -> dict[str, TokenTotals]:
    """Prompt and generation token counters by model_name. Raises ValueError on bad text."""
    prompt: dict[str, int] = {}
    generation: dict[str, int] = {}
    for sample in _samples(text, PROMPT_TOKENS + "_total", GENERATION_TOKENS + "_total"):
        model = sample.labels.get("model_name", "")
        target = prompt if sample.name.startswith(PROMPT_TOKENS) else generation
        target[model] = round(sample.value)
    return {
        model: TokenTotals(prompt=prompt.get(model, 0), generation=generation.get(model, 0))
        for model in prompt.keys() | generation.keys()
    }


def _samples(text: str, *names: str) -> Iterator[Sample]:
    """Samples named one of `names`, or one of them plus `_total` (see the module's note).

    Only the lines that can belong to those metrics go to the parser: exporters serve dozens
    of other fields (a vLLM page is mostly histograms), and parsing is the scrape's main cost.
    """
    wanted = {name: name for name in names} | {name + "_total": name for name in names}
    prefixes = tuple(f"{lead}{name}" for name in names for lead in ("", "# HELP ", "# TYPE "))
    lines = [line for line in text.splitlines() if line.startswith(prefixes)]
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            name = wanted.get(sample.name)
            if name is not None:
                yield sample._replace(name=name)
