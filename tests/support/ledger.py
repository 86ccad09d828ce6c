"""The usage ledger as gateways and the meter fill it: store what is queued, read a request's."""

import time
import uuid

from metering.consumer import Meter
from metering.models import UsageRecord


def drain() -> int:
    """Let the meter store every queued usage event now."""
    return sum(meter.drain() for meter in Meter.from_settings())


def usage_for(request_id: str, timeout: float = 5.0) -> list[UsageRecord]:
    """The stored usage records of a request, once the meter has stored any (none if none
    came within `timeout`: the caller's assertion says what it expected).

    Gateways hand records over just after the response, so give them a moment.
    """
    records = UsageRecord.objects.filter(request_id=uuid.UUID(request_id.removeprefix("req_")))
    deadline = time.monotonic() + timeout
    drain()
    while not records.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # polls: a record may come any moment
        drain()
    return list(records)
