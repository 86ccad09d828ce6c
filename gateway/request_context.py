"""One inference request on its way through the gateway (gateway/app.py): the one object its
steps pass along, instead of a dozen arguments.

Built once the request is authenticated, its body checked, its backends picked and its
reservation known; from then on only admission adds to it.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from gateway.auth import Principal
from gateway.limits import Admission
from gateway.pricing import Rate
from gateway.queueing import Slot
from gateway.responses import Receive, Send
from gateway.routing import Backend
from gateway.validation import InferenceRequest


@dataclass(slots=True)
class Call:
    request_id: uuid.UUID
    rid: str  # `req_<hex>`, the x-request-id the client sees
    key: str  # str(request_id): the id in Redis and in the usage record
    arrived: float  # time.monotonic() when the request came in
    send: Send
    receive: Receive
    principal: Principal
    request: InferenceRequest
    backends: list[Backend]  # best first; never empty
    reserve: int  # the most tokens it can use, reserved against the limits
    # Filled in by admission: its price (None where unpriced), the limits' answer and its
    # backend slot; admission and slot stay None when it is served degraded (Redis away).
    rate: Rate | None = None
    admission: Admission | None = None
    slot: Slot | None = None

    @property
    def waited_ms(self) -> float:
        return 0.0 if self.slot is None else self.slot.waited_ms


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None
