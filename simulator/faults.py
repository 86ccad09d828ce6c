"""Operator-style fault injection: tests arm a fault and the next N inference requests get it.

Armed faults form a queue; each inference request takes one unit from the oldest, so
`status x2` then `stall x1` fails two requests and stalls the third.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

REQUEST_KINDS = ("status", "stall", "disconnect", "usage")


@dataclass(slots=True)
class Fault:
    kind: str
    remaining: int
    status: int = 0
    seconds: float = 0.0
    after_tokens: int = 0
    # kind "usage": what the backend reports instead of the truth (see `misreport`).
    usage: Any = None

    def misreport(self, true: dict[str, Any]) -> Any:
        """The usage report of a buggy backend: these fields over the true ones, or, when the
        fault's `usage` is not an object, that value as the whole report."""
        if isinstance(self.usage, dict):
            return {**true, **self.usage}
        return self.usage


def _int(spec: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = spec.get(key, default)
    # bool is an int to Python but never what a caller means here.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"'{key}' must be an integer in [{low}, {high}]")
    return value


def _seconds(spec: dict[str, Any]) -> float:
    value = spec.get("seconds")
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ValueError("'seconds' must be a number >= 0")
    return float(value)


class Faults:
    def __init__(self) -> None:
        self._pending: deque[Fault] = deque()
        # Status /health answers with while set; None means healthy.
        self.health_status: int | None = None

    def arm(self, spec: object) -> None:
        """Validate and arm a fault described as in the README; raises ValueError when bad."""
        if not isinstance(spec, dict):
            raise ValueError("body must be a JSON object")
        kind = spec.get("kind")
        if kind == "health":
            self.health_status = _int(spec, "status", 503, 400, 599)
            return
        if kind not in REQUEST_KINDS:
            raise ValueError("'kind' must be one of status, stall, disconnect, usage, health")
        count = _int(spec, "count", 1, 1, 2**31)
        if kind == "status":
            status = _int(spec, "status", 503, 400, 599)
            self._pending.append(Fault(kind, count, status=status))
        elif kind == "usage":
            if "usage" not in spec:
                raise ValueError("'usage' must give the report to send: fields over the true ones")
            self._pending.append(Fault(kind, count, usage=spec["usage"]))
        elif kind == "stall":
            after = _int(spec, "after_tokens", 0, 0, 2**31)
            self._pending.append(Fault(kind, count, seconds=_seconds(spec), after_tokens=after))
        else:
            after = _int(spec, "after_tokens", 0, 0, 2**31)
            self._pending.append(Fault(kind, count, after_tokens=after))

    def take(self) -> Fault | None:
        """The fault for the request now arriving, if any is armed."""
        if not self._pending:
            return None
        fault = self._pending[0]
        fault.remaining -= 1
        if fault.remaining == 0:
            self._pending.popleft()
        return fault

    def clear(self) -> None:
        self._pending.clear()
        self.health_status = None

    def describe(self) -> dict[str, Any]:
        return {
            "pending": [asdict(fault) for fault in self._pending],
            "health_status": self.health_status,
        }
