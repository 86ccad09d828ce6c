"""Configuration of one simulated backend process."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MODEL = "llama-3.1-8b-instruct"


@dataclass(frozen=True, slots=True)
class TimingModel:
    """Step costs of one GPU, in modelled seconds.

    Defaults are published figures for Llama-3.1-8B on one H100 under vLLM: a first token after
    ~10 ms plus prefill at ~20k tokens/s, and an inter-token latency that grows slowly with the
    number of sequences sharing the batch.
    """

    prefill_base_s: float = 0.010
    prefill_tokens_per_s: float = 20_000.0
    decode_base_s: float = 0.0067
    decode_per_seq_s: float = 0.00008
    embed_base_s: float = 0.002
    embed_tokens_per_s: float = 100_000.0
    # Prefill on GPUs of its own (disaggregated serving): it no longer stalls the decode batch,
    # and a sequence's first token comes a prefill pass after it is admitted.
    separate_prefill: bool = False

    def __post_init__(self) -> None:
        if self.prefill_tokens_per_s <= 0:
            raise ValueError("prefill tokens per second must be > 0")
        if min(self.prefill_base_s, self.decode_base_s, self.decode_per_seq_s) < 0:
            raise ValueError("pass times must be >= 0")

    @classmethod
    def paced(cls, *, ttft_s: float, itl_s: float) -> TimingModel:
        """A backend of fixed pace, for benchmarks of what sits in front of it: each request's
        first token comes `ttft_s` after it is admitted, whatever the prompt and the batch, and
        a decode pass takes `itl_s` whatever the batch."""
        if ttft_s <= 0 or itl_s <= 0:
            raise ValueError("time to first token and inter-token latency must be > 0")
        return cls(
            prefill_base_s=ttft_s,
            prefill_tokens_per_s=float("inf"),
            decode_base_s=itl_s,
            decode_per_seq_s=0.0,
            separate_prefill=True,
        )

    def step_seconds(self, *, decode_seqs: int, prefill_seqs: int, prefill_tokens: int) -> float:
        """Duration of one engine step: decode for the batch plus prefill of new arrivals."""
        return self.decode_seconds(decode_seqs) + self.prefill_seconds(prefill_seqs, prefill_tokens)

    def decode_seconds(self, seqs: int) -> float:
        """One decode pass over `seqs` sequences (0 when none decode)."""
        return self.decode_base_s + self.decode_per_seq_s * seqs if seqs else 0.0

    def prefill_seconds(self, seqs: int, tokens: int) -> float:
        """One prefill pass over `seqs` new sequences with `tokens` uncached prompt tokens."""
        return self.prefill_base_s + tokens / self.prefill_tokens_per_s if seqs else 0.0

    def embed_seconds(self, tokens: int) -> float:
        return self.embed_base_s + tokens / self.embed_tokens_per_s


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything that shapes a simulator's behaviour; one instance per server."""

    name: str = "sim"
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    host: str = "127.0.0.1"
    # 0 asks the OS for a free port; the bound address is printed and exposed by the server.
    port: int = 9101
    max_num_seqs: int = 256
    # Prompt tokens prefilled per step; keeps a burst of long prompts from stalling the batch.
    max_num_batched_tokens: int = 8192
    seed: int = 0
    # Every modelled duration is divided by this; 0 means no sleeping at all (benchmarks).
    speedup: float = 1.0
    embedding_dim: int = 384
    max_model_len: int = 131_072
    # Bounded like a real KV cache: about 262k tokens of prefix in 16-token blocks.
    prefix_cache_blocks: int = 16_384
    # GPUs per engine: a tensor-parallel group sharing each step's work (see simulator/power.py).
    gpus: int = 1
    timing: TimingModel = field(default_factory=TimingModel)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one model is required")
        if self.speedup < 0:
            raise ValueError("speedup must be >= 0")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be >= 1")
        if not 1 <= self.gpus <= 64:
            raise ValueError("gpus must be in [1, 64]")

    @property
    def instant(self) -> bool:
        return self.speedup == 0

    def wall_seconds(self, modelled: float) -> float:
        """Real seconds to sleep for a modelled duration."""
        return 0.0 if self.instant else modelled / self.speedup
