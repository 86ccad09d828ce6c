"""vLLM-named Prometheus metrics, in a registry of this server's own.

A private registry keeps several simulators (or a simulator and a gateway) in one process from
sharing counters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from simulator.engine import Engine, Sequence, Step

# vLLM's buckets (vllm/v1/metrics/loggers.py): tokens per engine step, seconds per request phase.
_STEP_TOKENS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_PHASE_SECONDS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                  120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


def _reader(engine: Engine, attribute: str) -> Callable[[], float]:
    return lambda: float(getattr(engine, attribute))


class Metrics:
    """Engine observer; gauges read the engines at scrape time so requests pay nothing for them."""

    def __init__(self, engines: Mapping[str, Engine], *, speedup: float = 0.0) -> None:
        self.registry = CollectorRegistry()
        # Request phases are timed by the engine's clock (modelled seconds), shown in this
        # server's compressed time like every other duration it reports.
        self._time_scale = 1 / speedup if speedup > 0 else 1.0
        labels = ["model_name"]
        running = Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels,
            registry=self.registry,
        )
        waiting = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            labels,
            registry=self.registry,
        )
        for model, engine in engines.items():
            running.labels(model).set_function(_reader(engine, "num_running"))
            waiting.labels(model).set_function(_reader(engine, "num_waiting"))
        # prometheus_client appends _total to counter names itself.
        prompt = Counter(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            labels,
            registry=self.registry,
        )
        generation = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            labels,
            registry=self.registry,
        )
        self._success = Counter(
            "vllm:request_success",
            "Count of finished requests, by reason.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        # Observed once per engine step, as vLLM does: its count is the number of steps, which
        # metering uses to tell a step's fixed time from its tokens' (docs/energy.md).
        step_tokens = Histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            labels,
            buckets=_STEP_TOKENS,
            registry=self.registry,
        )
        # Observed when a request finishes, as vLLM does.
        prefill_time = Histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            labels,
            buckets=_PHASE_SECONDS,
            registry=self.registry,
        )
        decode_time = Histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            labels,
            buckets=_PHASE_SECONDS,
            registry=self.registry,
        )
        self._prompt = {model: prompt.labels(model) for model in engines}
        self._generation = {model: generation.labels(model) for model in engines}
        self._step_tokens = {model: step_tokens.labels(model) for model in engines}
        self._prefill_time = {model: prefill_time.labels(model) for model in engines}
        self._decode_time = {model: decode_time.labels(model) for model in engines}

    def on_step(self, step: Step) -> None:
        self._step_tokens[step.model].observe(step.prefill_tokens + step.decode_tokens)

    def on_finish(self, seq: Sequence) -> None:
        if seq.scheduled_at is not None:
            self._prompt[seq.model].inc(seq.num_prompt_tokens)
        if seq.num_generated:
            self._generation[seq.model].inc(seq.num_generated)
        self._success.labels(seq.model, seq.finish_reason or "abort").inc()
        scheduled, first, finished = seq.gpu_scheduled, seq.gpu_first_token, seq.gpu_finished
        if scheduled is not None and first is not None and finished is not None:
            scale = self._time_scale
            self._prefill_time[seq.model].observe(max(first - scheduled, 0.0) * scale)
            self._decode_time[seq.model].observe(max(finished - first, 0.0) * scale)

    def on_embedding(self, model: str, tokens: int) -> None:
        self._prompt[model].inc(tokens)
        self._success.labels(model, "stop").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
