"""Continuous batching engine: one loop per model, stepping like vLLM's scheduler.

Each step admits waiting sequences in (priority, arrival) order while the batch has room, then
"runs" for the modelled duration of decoding the batch plus prefilling the new arrivals. At the
end of the step every running sequence has one more token; new arrivals have their first one.

Observers see every step and every finished sequence: metrics, stats and the power meter
(simulator/power.py) are observers. The engine also keeps the wall time it spent with nothing to
run, which the power meter turns into idle energy.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from simulator.config import SimConfig
from simulator.prefix_cache import PrefixCache
from simulator.textgen import Prompt

_MAX_CATCH_UP_S = 0.05


class SeqState(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


class Sequence:
    """One prompt being generated; its tokens exist only as a count, the text is derived later."""

    __slots__ = (
        "arrived_at",
        "cached_tokens",
        "client_request_id",
        "event",
        "finish_reason",
        "finished_at",
        "first_token_at",
        "gpu_finished",
        "gpu_first_token",
        "gpu_scheduled",
        "length_limited",
        "max_tokens",
        "model",
        "num_generated",
        "priority",
        "prompt",
        "request_id",
        "scheduled_at",
        "stall_at",
        "stalled",
        "state",
        "wake_at",
    )

    def __init__(
        self,
        *,
        request_id: str,
        model: str,
        prompt: Prompt,
        max_tokens: int,
        length_limited: bool,
        priority: int = 0,
        client_request_id: str | None = None,
        event: asyncio.Event | None = None,
    ) -> None:
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.model = model
        self.prompt = prompt
        self.max_tokens = max_tokens
        # A caller-imposed limit ends with "length"; a natural ending is "stop".
        self.length_limited = length_limited
        self.priority = priority
        # Shared by the sequences of one HTTP request; set when any reaches wake_at or finishes.
        self.event = event
        self.wake_at = max_tokens
        # A stall fault freezes the sequence (in the batch, getting no tokens) at this count
        # until the handler resumes it, as a hung backend would.
        self.stall_at: int | None = None
        self.stalled = False
        self.state = SeqState.WAITING
        self.cached_tokens = 0
        self.num_generated = 0
        self.finish_reason: str | None = None
        self.arrived_at = time.monotonic()
        self.scheduled_at: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        # The same three moments by the engine's clock (Engine.clock), as vLLM times them.
        self.gpu_scheduled: float | None = None
        self.gpu_first_token: float | None = None
        self.gpu_finished: float | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt.num_tokens

    @property
    def uncached_tokens(self) -> int:
        return self.prompt.num_tokens - self.cached_tokens

    @property
    def done(self) -> bool:
        return self.state is SeqState.FINISHED or self.state is SeqState.ABORTED


# (sequence, prompt tokens it prefilled this step, tokens it decoded this step)
SeqWork = tuple[Sequence, int, int]


@dataclass(frozen=True, slots=True)
class Step:
    """What the GPU did in one step; the unit a power model prices.

    A prefilled sequence gets its first output token from the prefill pass itself, so tokens
    generated in a step = decode_tokens + the number of sequences that prefilled.
    """

    model: str
    started_at: float  # time.monotonic() when the step began
    duration_s: float  # modelled GPU seconds; the wall-clock time is this divided by speedup
    batch_size: int
    prefill_tokens: int
    decode_tokens: int
    work: tuple[SeqWork, ...]
    # duration_s = prefill_s + decode_s: one prefill pass, then decode passes over decode_batch
    # sequences each (one pass in the engine loop; an instant sequence's whole decode at batch 1).
    prefill_s: float
    decode_s: float
    decode_batch: int


class EngineObserver(Protocol):
    def on_step(self, step: Step) -> None: ...

    def on_finish(self, seq: Sequence) -> None: ...


class Engine:
    def __init__(self, *, model: str, config: SimConfig) -> None:
        self.model = model
        self._config = config
        self._cache = PrefixCache(config.prefix_cache_blocks)
        self._waiting: list[tuple[int, int, Sequence]] = []
        self._num_waiting = 0
        # A dict keeps admission order and removes aborted sequences in O(1).
        self._running: dict[Sequence, None] = {}
        self._arrivals = itertools.count()
        self._wakeup = asyncio.Event()
        self._observers: list[EngineObserver] = []
        self._task: asyncio.Task[None] | None = None
        # Idle = waiting for work (instant mode: always). Wall seconds, not modelled ones.
        self._idle_since: float | None = time.monotonic()
        self._idle_total = 0.0
        # The step being "run" right now (slept through), for a power reading mid-step.
        self.running_step: Step | None = None
        # The engine's own clock: modelled GPU seconds of the steps run so far. The engine
        # times requests by it, as a real one times them by its GPUs' work; wall time may
        # differ when this process falls behind and catches up.
        self.clock = 0.0

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    @property
    def idle(self) -> bool:
        return self._idle_since is not None

    def idle_seconds(self, now: float) -> float:
        """Wall seconds spent waiting for work from creation up to `now` (a time.monotonic())."""
        if self._idle_since is None:
            return self._idle_total
        return self._idle_total + max(now - self._idle_since, 0.0)

    def add_observer(self, observer: EngineObserver) -> None:
        self._observers.append(observer)

    def start(self) -> None:
        if not self._config.instant:
            run = self._run_separate if self._config.timing.separate_prefill else self._run
            self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.running_step = None

    def submit(self, seq: Sequence) -> None:
        heapq.heappush(self._waiting, (seq.priority, next(self._arrivals), seq))
        self._num_waiting += 1
        self._wakeup.set()

    def abort(self, seq: Sequence) -> None:
        if seq.state is SeqState.WAITING:
            # Left in the heap and skipped on admission; cheaper than re-heapifying.
            self._num_waiting -= 1
        elif seq.state is SeqState.RUNNING:
            self._running.pop(seq, None)
            # The freed slot may let a waiting sequence in while the rest are stalled.
            self._wakeup.set()
        else:
            return
        self._finish(seq, SeqState.ABORTED, "abort")

    def resume(self, seq: Sequence) -> None:
        """End a stall; a sequence stalls at most once."""
        seq.stall_at = None
        if seq.stalled:
            seq.stalled = False
            self._wakeup.set()

    def run_instant(self, seq: Sequence) -> None:
        """Instant mode: admit and fully generate a sequence without touching the event loop."""
        seq.scheduled_at = seq.first_token_at = time.monotonic()
        seq.cached_tokens = self._cache.admit(seq.prompt.block_hashes, seq.prompt.num_tokens)
        seq.state = SeqState.RUNNING
        seq.num_generated = seq.max_tokens

    def finish_instant(self, seq: Sequence, *, delivered: int) -> None:
        """Account an instant sequence once the caller knows how much of it reached the client.

        Fewer tokens than generated means the response was cut off, which counts as an abort.
        """
        seq.num_generated = delivered
        decode_tokens = max(delivered - 1, 0)
        timing = self._config.timing
        prefill_s = timing.prefill_seconds(1, seq.uncached_tokens)
        decode_s = decode_tokens * timing.decode_seconds(1)
        seq.gpu_scheduled = self.clock
        seq.gpu_first_token = self.clock + prefill_s
        self.clock += prefill_s + decode_s
        self._emit_step(
            Step(
                model=self.model,
                started_at=seq.arrived_at,
                duration_s=prefill_s + decode_s,
                batch_size=1,
                prefill_tokens=seq.uncached_tokens,
                decode_tokens=decode_tokens,
                work=((seq, seq.uncached_tokens, decode_tokens),),
                prefill_s=prefill_s,
                decode_s=decode_s,
                decode_batch=1,
            )
        )
        if delivered < seq.max_tokens:
            self._finish(seq, SeqState.ABORTED, "abort")
        else:
            self._finish(seq, SeqState.FINISHED, "length" if seq.length_limited else "stop")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        timing = self._config.timing
        deadline = 0.0
        while True:
            decoding = [seq for seq in self._running if not seq.stalled]
            admitted = self._admit()
            if not decoding and not admitted:
                self._wakeup.clear()
                if self._idle_since is None:
                    self._idle_since = time.monotonic()
                await self._wakeup.wait()
                self._idle_total += time.monotonic() - self._idle_since
                self._idle_since = None
                deadline = loop.time()
                continue
            prefill_tokens = sum(seq.uncached_tokens for seq in admitted)
            prefill_s = timing.prefill_seconds(len(admitted), prefill_tokens)
            decode_s = timing.decode_seconds(len(decoding))
            step = Step(
                model=self.model,
                started_at=time.monotonic(),
                duration_s=decode_s + prefill_s,
                batch_size=len(decoding) + len(admitted),
                prefill_tokens=prefill_tokens,
                decode_tokens=len(decoding),
                work=tuple((seq, 0, 1) for seq in decoding)
                + tuple((seq, seq.uncached_tokens, 0) for seq in admitted),
                prefill_s=prefill_s,
                decode_s=decode_s,
                decode_batch=len(decoding),
            )
            # Steps are laid end to end on a deadline rather than slept one by one, so timer
            # overshoot (a millisecond per sleep under uvloop) does not add up; a long stall of
            # the event loop is not repaid in a burst beyond _MAX_CATCH_UP_S.
            deadline = max(deadline, loop.time() - _MAX_CATCH_UP_S)
            deadline += self._config.wall_seconds(step.duration_s)
            self.running_step = step
            await asyncio.sleep(deadline - loop.time())
            self.running_step = None
            self.clock += step.duration_s
            self._emit_step(step)
            now = time.monotonic()
            for seq in admitted:
                seq.first_token_at = now
                seq.gpu_first_token = self.clock
            for seq in itertools.chain(decoding, admitted):
                # A sequence aborted while the step ran is no longer ours to advance.
                if seq.state is SeqState.RUNNING:
                    self._advance(seq)

    async def _run_separate(self) -> None:
        """The engine loop where prefill does not share the decode batch's passes: each admitted
        sequence's prefill runs on its own, and decode passes run over the sequences that have
        their first token."""
        loop = asyncio.get_running_loop()
        timing = self._config.timing
        prefilling: list[tuple[float, int, Sequence]] = []  # (ready at: loop time, arrival, seq)
        decoding: dict[Sequence, None] = {}
        deadline = 0.0
        while True:
            now = loop.time()
            for seq in self._admit():
                prefill_s = timing.prefill_seconds(1, seq.uncached_tokens)
                ready = now + self._config.wall_seconds(prefill_s)
                heapq.heappush(prefilling, (ready, next(self._arrivals), seq))
            while prefilling and prefilling[0][0] <= loop.time():
                seq = heapq.heappop(prefilling)[2]
                if seq.state is SeqState.RUNNING:
                    self._prefilled(seq)
                    decoding[seq] = None
            batch = [seq for seq in decoding if seq.state is SeqState.RUNNING and not seq.stalled]
            decoding = dict.fromkeys(seq for seq in decoding if seq.state is SeqState.RUNNING)
            if not batch:
                self._wakeup.clear()
                if not prefilling:
                    self._idle_since = self._idle_since or time.monotonic()
                    await self._wakeup.wait()
                    self._idle_total += time.monotonic() - self._idle_since
                    self._idle_since = None
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), prefilling[0][0] - now)
                deadline = loop.time()
                continue
            decode_s = timing.decode_seconds(len(batch))
            step = Step(
                model=self.model,
                started_at=time.monotonic(),
                duration_s=decode_s,
                batch_size=len(batch),
                prefill_tokens=0,
                decode_tokens=len(batch),
                work=tuple((seq, 0, 1) for seq in batch),
                prefill_s=0.0,
                decode_s=decode_s,
                decode_batch=len(batch),
            )
            deadline = max(deadline, loop.time() - _MAX_CATCH_UP_S)
            deadline += self._config.wall_seconds(decode_s)
            self.running_step = step
            await asyncio.sleep(deadline - loop.time())
            self.running_step = None
            self.clock += decode_s
            self._emit_step(step)
            for seq in batch:
                if seq.state is SeqState.RUNNING:
                    self._advance(seq)

    def _prefilled(self, seq: Sequence) -> None:
        """A separately prefilled sequence has its first token (and its prefill pass counted)."""
        prefill_s = self._config.timing.prefill_seconds(1, seq.uncached_tokens)
        self._emit_step(
            Step(
                model=self.model,
                started_at=seq.scheduled_at or time.monotonic(),
                duration_s=prefill_s,
                batch_size=1,
                prefill_tokens=seq.uncached_tokens,
                decode_tokens=0,
                work=((seq, seq.uncached_tokens, 0),),
                prefill_s=prefill_s,
                decode_s=0.0,
                decode_batch=0,
            )
        )
        seq.first_token_at = time.monotonic()
        # Its prefill ran beside the decode steps that advanced the clock meanwhile.
        seq.gpu_first_token = self.clock
        seq.gpu_scheduled = self.clock - prefill_s
        self._advance(seq)

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        budget = self._config.max_num_batched_tokens
        now = time.monotonic()
        while self._waiting and len(self._running) < self._config.max_num_seqs:
            seq = self._waiting[0][2]
            if seq.state is not SeqState.WAITING:
                heapq.heappop(self._waiting)
                continue
            # Over-budget prompts wait for the next step, but one always goes, however large.
            prompt = seq.prompt
            uncached = prompt.num_tokens - self._cache.peek(prompt.block_hashes, prompt.num_tokens)
            if admitted and uncached > budget:
                break
            heapq.heappop(self._waiting)
            self._num_waiting -= 1
            seq.cached_tokens = self._cache.admit(seq.prompt.block_hashes, seq.prompt.num_tokens)
            budget -= seq.uncached_tokens
            seq.state = SeqState.RUNNING
            seq.scheduled_at = now
            seq.gpu_scheduled = self.clock
            self._running[seq] = None
            admitted.append(seq)
        return admitted

    def _advance(self, seq: Sequence) -> None:
        seq.num_generated += 1
        if seq.num_generated >= seq.max_tokens:
            del self._running[seq]
            self._finish(seq, SeqState.FINISHED, "length" if seq.length_limited else "stop")
            return
        if seq.num_generated == seq.stall_at:
            seq.stalled = True
        if seq.event is not None and (seq.stalled or seq.num_generated >= seq.wake_at):
            seq.event.set()

    def _finish(self, seq: Sequence, state: SeqState, reason: str) -> None:
        seq.state = state
        seq.finish_reason = reason
        seq.finished_at = time.monotonic()
        seq.gpu_finished = self.clock
        if seq.event is not None:
            seq.event.set()
        for observer in self._observers:
            observer.on_finish(seq)

    def _emit_step(self, step: Step) -> None:
        for observer in self._observers:
            observer.on_step(step)
