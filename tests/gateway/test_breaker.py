"""The circuit breaker: one request's failure leaves a backend in service; a backend that keeps
failing across requests leaves routing, and comes back through one probe (pure logic)."""

from hypothesis import given
from hypothesis import strategies as st

from gateway.breaker import FAILURES_TO_OPEN, MIN_VOLUME, Breaker, State

OPEN_SECONDS = 5.0


def test_one_failure_leaves_the_backend_in_service() -> None:
    breaker = Breaker(OPEN_SECONDS)
    assert breaker.failure(0.0) is False
    assert breaker.available(0.0)


def test_consecutive_failures_open_it_then_one_probe_decides() -> None:
    breaker = Breaker(OPEN_SECONDS)
    opened = [breaker.failure(float(i)) for i in range(FAILURES_TO_OPEN)]
    assert opened == [False] * (FAILURES_TO_OPEN - 1) + [True]
    now = FAILURES_TO_OPEN - 1.0
    assert not breaker.available(now)
    later = now + OPEN_SECONDS
    assert breaker.state(later) is State.HALF_OPEN and breaker.available(later)
    breaker.attempt(later)
    assert not breaker.available(later)  # one probe at a time
    assert breaker.failure(later) is True  # the probe failed: open again
    assert not breaker.available(later + 1)
    again = later + OPEN_SECONDS
    breaker.attempt(again)
    breaker.success()
    assert breaker.state(again) is State.CLOSED and breaker.available(again)


def test_a_high_error_rate_opens_it_without_a_run_of_failures() -> None:
    breaker = Breaker(OPEN_SECONDS)
    opened = False
    for i in range(MIN_VOLUME + 1):
        if i % 2:
            breaker.success()
        else:
            opened = breaker.failure(float(i)) or opened
    assert opened


@given(st.lists(st.booleans(), max_size=200))
def test_it_never_opens_while_most_requests_succeed_and_no_run_is_long(
    failures: list[bool],
) -> None:
    """Failures at most one in three, never two in a row: the backend serves throughout."""
    breaker = Breaker(OPEN_SECONDS)
    for i, failed in enumerate(failures):
        if failed and i % 3 == 0:
            breaker.failure(float(i))
        else:
            breaker.success()
        assert breaker.available(float(i))
