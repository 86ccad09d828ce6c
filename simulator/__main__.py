"""python -m simulator: serve a simulated OpenAI-compatible GPU backend."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from simulator.config import DEFAULT_MODEL, SimConfig, TimingModel
from simulator.server import serve


def parse_args(argv: Sequence[str] | None = None) -> SimConfig:
    parser = argparse.ArgumentParser(
        prog="python -m simulator", description="Simulated vLLM-like inference backend."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101, help="0 picks a free port")
    parser.add_argument("--name", default="sim", help="shown in /_sim/stats and logs")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        help=f"served model name; repeat for several (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--speedup", type=float, default=1.0, help="divide simulated durations; 0 = instant"
    )
    parser.add_argument("--embedding-dim", type=int, default=384)
    parser.add_argument("--max-model-len", type=int, default=131_072)
    parser.add_argument(
        "--gpus", type=int, default=1, help="GPUs per model (a tensor-parallel group), 1-64"
    )
    parser.add_argument(
        "--paced",
        nargs=2,
        type=float,
        metavar=("TTFT_MS", "ITL_MS"),
        help="fixed pace instead of the H100 model: the first token TTFT_MS after admission, "
        "then one every ITL_MS, whatever the prompt and the batch (for benchmarks of a proxy)",
    )
    model = TimingModel()
    for flag, default, meaning in (
        ("--prefill-tokens-per-s", model.prefill_tokens_per_s, "prompt tokens a pass computes/s"),
        ("--prefill-base-ms", 1000 * model.prefill_base_s, "a prefill pass's time beside tokens'"),
        ("--decode-base-ms", 1000 * model.decode_base_s, "a decode pass's time beside sequences'"),
        ("--decode-per-seq-ms", 1000 * model.decode_per_seq_s, "a decode pass's time a sequence"),
    ):
        parser.add_argument(
            flag, type=float, default=default, help=f"{meaning} (default %(default)g)"
        )
    args = parser.parse_args(argv)
    try:
        timing = (
            TimingModel.paced(ttft_s=args.paced[0] / 1000, itl_s=args.paced[1] / 1000)
            if args.paced
            else TimingModel(
                prefill_base_s=args.prefill_base_ms / 1000,
                prefill_tokens_per_s=args.prefill_tokens_per_s,
                decode_base_s=args.decode_base_ms / 1000,
                decode_per_seq_s=args.decode_per_seq_ms / 1000,
            )
        )
        return SimConfig(
            name=args.name,
            models=tuple(args.models or (DEFAULT_MODEL,)),
            host=args.host,
            port=args.port,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            seed=args.seed,
            speedup=args.speedup,
            embedding_dim=args.embedding_dim,
            max_model_len=args.max_model_len,
            gpus=args.gpus,
            timing=timing,
        )
    except ValueError as exc:
        parser.error(str(exc))


async def _main(config: SimConfig) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)

    def ready(url: str) -> None:
        # Scripts that start us with --port 0 read the bound address from this line.
        print(
            f"simulator {config.name} listening on {url} models={','.join(config.models)} "
            f"speedup={config.speedup:g}",
            flush=True,
        )

    with contextlib.suppress(asyncio.CancelledError):
        await serve(config, ready)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop
    except ImportError:
        runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_main(config))
    except OSError as exc:
        # Typically the port is taken; a one-line reason beats a traceback.
        sys.exit(f"simulator: cannot serve on {config.host}:{config.port}: {exc}")


if __name__ == "__main__":
    main()
