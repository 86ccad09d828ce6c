"""vLLM-named Prometheus metrics, in a registry of this server's own.

A private registry keeps several simulators (or a simulator and a gateway) in one process from
sharing counters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from simulator.engine import Engine, Sequence, Step


def _reader(engine: Engine, attribute: str) -> Callable[[], float]:
    return lambda: float(getattr(engine, attribute))


class Metrics:
    """Engine observer; gauges read the engines at scrape time so requests pay nothing for them."""

    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self.registry = CollectorRegistry()
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
        self._prompt = {model: prompt.labels(model) for model in engines}
        self._generation = {model: generation.labels(model) for model in engines}

    def on_step(self, step: Step) -> None:
        pass

    def on_finish(self, seq: Sequence) -> None:
        if seq.scheduled_at is not None:
            self._prompt[seq.model].inc(seq.num_prompt_tokens)
        if seq.num_generated:
            self._generation[seq.model].inc(seq.num_generated)
        self._success.labels(seq.model, seq.finish_reason or "abort").inc()

    def on_embedding(self, model: str, tokens: int) -> None:
        self._prompt[model].inc(tokens)
        self._success.labels(model, "stop").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
