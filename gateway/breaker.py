"""A circuit breaker per backend, per gateway process: a backend leaves routing for the faults
of the backend, never for one request's.

Closed, it serves. It opens after FAILURES_TO_OPEN consecutive failures, or when at least half
of the last WINDOW outcomes failed (with at least MIN_VOLUME of them): failures of different
requests, since one request tries a backend at most once. Open, it serves nothing for
`open_seconds`; then it is half-open and lets one request through as a probe: success closes it,
failure opens it again. What counts as a failure is the proxy's call (gateway/proxy.py): a
refused connection, a timeout, a 5xx; never a 4xx, which is the client's.
"""

from collections import deque
from enum import Enum

FAILURES_TO_OPEN = 5
WINDOW = 20
MIN_VOLUME = 10
FAILURE_RATE_TO_OPEN = 0.5


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    __slots__ = ("_outcomes", "_probing", "consecutive_failures", "open_seconds", "open_until")

    def __init__(self, open_seconds: float) -> None:
        self.open_seconds = open_seconds
        self.open_until: float | None = None
        self.consecutive_failures = 0
        self._outcomes: deque[bool] = deque(maxlen=WINDOW)  # True: a failure
        self._probing = False

    def state(self, now: float) -> State:
        if self.open_until is None:
            return State.CLOSED
        return State.OPEN if now < self.open_until else State.HALF_OPEN

    def available(self, now: float) -> bool:
        """Whether a request may be sent: closed, or half-open with no probe out yet."""
        state = self.state(now)
        return state is State.CLOSED or (state is State.HALF_OPEN and not self._probing)

    def attempt(self, now: float) -> None:
        """A request is being sent; when half-open, it is the one probe."""
        if self.state(now) is State.HALF_OPEN:
            self._probing = True

    def abandon(self) -> None:
        """The request left before the backend answered: no verdict, and no probe out."""
        self._probing = False

    def success(self) -> None:
        self.open_until = None
        self._probing = False
        self.consecutive_failures = 0
        self._outcomes.append(False)

    def failure(self, now: float) -> bool:
        """Count a failure; True when it opened the breaker (the caller logs it)."""
        was_probe, self._probing = self._probing, False
        self.consecutive_failures += 1
        self._outcomes.append(True)
        if self.state(now) is State.OPEN:
            return False
        if was_probe or self.state(now) is State.HALF_OPEN or self._tripped():
            self.open_until = now + self.open_seconds
            self._outcomes.clear()
            return True
        return False

    def _tripped(self) -> bool:
        if self.consecutive_failures >= FAILURES_TO_OPEN:
            return True
        failed = sum(self._outcomes)
        return len(self._outcomes) >= MIN_VOLUME and failed >= FAILURE_RATE_TO_OPEN * len(
            self._outcomes
        )
