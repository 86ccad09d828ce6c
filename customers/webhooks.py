"""Customer webhooks: what happened to an account, told to its HTTPS endpoints.

`webhook_emit` is the one way to raise an event: called inside the transaction of the change
it reports (a key revoked, an invoice finalised, a budget threshold crossed, credits low or
exhausted), it writes the event and one pending delivery per endpoint that wants it (an
outbox), so an event exists exactly when its change committed. Deliveries are made after the
commit by Celery, signed and retried with back-off (customers/webhook_delivery.py), never on a
request's path.
"""

import secrets
from typing import Any

from django.db import transaction
from django.utils import timezone

from customers.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

EventType = WebhookEvent.Type


def webhook_emit(*, account_id: int, event: str, data: dict[str, Any]) -> WebhookEvent:
    """Record `event` (a WebhookEvent.Type value) with its `data` for the account's endpoints
    that want it; delivery starts once the surrounding transaction commits."""
    if event not in EventType.values:
        raise ValueError(f"unknown webhook event type {event!r}")
    with transaction.atomic():
        record = WebhookEvent.objects.create(
            public_id=f"evt_{secrets.token_hex(12)}",
            account_id=account_id,
            type=event,
            data=data,
        )
        endpoints = WebhookEndpoint.objects.filter(account_id=account_id, enabled=True)
        now = timezone.now()
        WebhookDelivery.objects.bulk_create(
            WebhookDelivery(event=record, endpoint=endpoint, next_attempt_at=now)
            for endpoint in endpoints
            if not endpoint.events or event in endpoint.events
        )
        transaction.on_commit(_deliver_soon)
    return record


def _deliver_soon() -> None:
    """Ask a worker to deliver what is due now (the periodic sweep would, a little later)."""
    from customers.webhook_delivery import deliveries_due_kick

    deliveries_due_kick()
