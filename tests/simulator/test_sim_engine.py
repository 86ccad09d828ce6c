"""The continuous-batching engine on its own, observed through the step/finish hooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from simulator import SimConfig, Step
from simulator.engine import Engine, SeqState, Sequence
from simulator.textgen import text_prompt


class Recorder:
    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.finished: list[Sequence] = []

    def on_step(self, step: Step) -> None:
        self.steps.append(step)

    def on_finish(self, seq: Sequence) -> None:
        self.finished.append(seq)


def _seq(text: str, max_tokens: int, priority: int = 0) -> Sequence:
    return Sequence(
        request_id=text,
        model="m",
        prompt=text_prompt(0, text),
        max_tokens=max_tokens,
        length_limited=True,
        priority=priority,
        event=asyncio.Event(),
    )


async def _until(seq: Sequence, ready: Callable[[], bool]) -> None:
    assert seq.event is not None
    while not ready():
        seq.event.clear()
        await seq.event.wait()


async def _done(*seqs: Sequence) -> None:
    for seq in seqs:
        await _until(seq, lambda seq=seq: seq.done)  # type: ignore[misc]


@pytest.fixture
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Engine, Recorder]]:
    overrides = getattr(request, "param", {})
    engine = Engine(model="m", config=SimConfig(models=("m",), speedup=1000, **overrides))
    recorder = Recorder()
    engine.add_observer(recorder)
    engine.start()
    yield engine, recorder
    await engine.stop()


@pytest.mark.asyncio
async def test_every_step_is_reported_with_its_work(engine: tuple[Engine, Recorder]) -> None:
    eng, recorder = engine
    seq = _seq("one two three four five", max_tokens=4)

    eng.submit(seq)
    await _done(seq)

    first, *decodes = recorder.steps
    assert (first.batch_size, first.prefill_tokens, first.decode_tokens) == (1, 5, 0)
    assert [step.decode_tokens for step in decodes] == [1, 1, 1]
    assert first.work == ((seq, 5, 0),)
    timing = SimConfig().timing
    assert first.duration_s == timing.step_seconds(decode_seqs=0, prefill_seqs=1, prefill_tokens=5)
    assert recorder.finished == [seq]
    assert (seq.finish_reason, seq.num_generated) == ("length", 4)


@pytest.mark.parametrize("engine", [{"max_num_seqs": 2}], indirect=True)
@pytest.mark.asyncio
async def test_the_batch_never_exceeds_max_num_seqs(engine: tuple[Engine, Recorder]) -> None:
    eng, recorder = engine
    seqs = [_seq(f"prompt {i}", max_tokens=3) for i in range(5)]

    for seq in seqs:
        eng.submit(seq)
    await _done(*seqs)

    assert max(step.batch_size for step in recorder.steps) == 2
    generated = sum(s.decode_tokens for s in recorder.steps) + sum(
        1 for step in recorder.steps for _, prefill, _ in step.work if prefill
    )
    assert generated == 15


@pytest.mark.parametrize("engine", [{"max_num_seqs": 1}], indirect=True)
@pytest.mark.asyncio
async def test_waiting_sequences_run_by_priority_then_arrival(
    engine: tuple[Engine, Recorder],
) -> None:
    eng, recorder = engine
    seqs = [_seq("a", 2, priority=3), _seq("b", 2, priority=1), _seq("c", 2, priority=1)]

    for seq in seqs:
        eng.submit(seq)
    await _done(*seqs)

    assert [seq.request_id for seq in recorder.finished] == ["b", "c", "a"]


@pytest.mark.parametrize("engine", [{"max_num_batched_tokens": 100}], indirect=True)
@pytest.mark.asyncio
async def test_prefill_is_spread_over_steps_by_the_token_budget(
    engine: tuple[Engine, Recorder],
) -> None:
    eng, recorder = engine
    # Distinct first tokens, so the prefix cache cannot shrink the later prefills.
    seqs = [_seq(f"{i} " + " ".join(["w"] * 80), max_tokens=1) for i in range(3)]

    for seq in seqs:
        eng.submit(seq)
    await _done(*seqs)

    assert [step.prefill_tokens for step in recorder.steps] == [81, 81, 81]


@pytest.mark.asyncio
async def test_an_aborted_sequence_leaves_the_batch_and_keeps_its_tokens(
    engine: tuple[Engine, Recorder],
) -> None:
    eng, recorder = engine
    seq = _seq("long", max_tokens=10_000)
    seq.wake_at = 3
    eng.submit(seq)
    await _until(seq, lambda: seq.num_generated >= 3)

    eng.abort(seq)

    assert (seq.state, seq.finish_reason) == (SeqState.ABORTED, "abort")
    assert (eng.num_running, eng.num_waiting) == (0, 0)
    assert recorder.finished == [seq]
    assert seq.num_generated >= 3


@pytest.mark.parametrize("engine", [{"max_num_seqs": 1}], indirect=True)
@pytest.mark.asyncio
async def test_a_sequence_aborted_while_waiting_never_runs(
    engine: tuple[Engine, Recorder],
) -> None:
    eng, recorder = engine
    running, queued = _seq("first", 5), _seq("second", 5)
    eng.submit(running)
    eng.submit(queued)

    eng.abort(queued)
    await _done(running)

    assert queued.scheduled_at is None
    assert all(seq is not queued for step in recorder.steps for seq, _, _ in step.work)
    assert eng.num_waiting == 0


@pytest.mark.asyncio
async def test_a_stalled_sequence_gets_no_tokens_until_resumed(
    engine: tuple[Engine, Recorder],
) -> None:
    eng, _ = engine
    seq = _seq("stall me", max_tokens=6)
    seq.stall_at = 2
    eng.submit(seq)
    await _until(seq, lambda: seq.stalled)

    await asyncio.sleep(0.05)  # kept a sleep: no token may come meanwhile (an absence)
    assert seq.num_generated == 2

    eng.resume(seq)
    await _done(seq)
    assert seq.num_generated == 6
