"""Waiting for a condition: poll it until it holds, or fail once a deadline has passed.

A test that sleeps for "long enough" either waits longer than it needs or, on a busy machine,
not long enough. Poll what the test is waiting for instead, and say what that was: the
failure then names it. (A sleep that is the scenario itself, such as letting a lease lapse
or pacing a load generator, stays a sleep, with a comment saying so.)
"""

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    *,
    what: str,
    timeout: float = 10.0,
    interval: float = 0.05,
    explain: Callable[[], object] | None = None,
) -> T:
    """Call `condition` every `interval` seconds until it returns something truthy, and
    return that. After `timeout` seconds fail with an AssertionError naming `what` was
    awaited (and `explain()`, if given: how things stood at the deadline). The condition is
    tried once more at the deadline, so a slow machine never fails a condition that holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, timeout, explain))
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], Awaitable[T] | T],
    *,
    what: str,
    timeout: float = 10.0,  # noqa: ASYNC109 (a deadline between tries, not around one await)
    interval: float = 0.05,
    explain: Callable[[], object] | None = None,
) -> T:
    """wait_until for a test on an event loop: the condition may be a coroutine function,
    and the waits between tries let the loop run."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, timeout, explain))
        await asyncio.sleep(interval)


def _timed_out(what: str, timeout: float, explain: Callable[[], object] | None) -> str:
    message = f"timed out after {timeout:g} s waiting for {what}"
    return message if explain is None else f"{message} ({explain()})"
