"""Customer webhooks: what happened to an account, told to its HTTPS endpoints.

`webhook_emit` is the one way to raise an event: called inside the transaction of the change
it reports (a key revoked, an invoice finalised, a budget threshold crossed, credits low or
exhausted), it writes the event and one pending delivery per endpoint that wants it (an
outbox), so an event exists exactly when its change committed. Deliveries are made after the
commit by Celery, signed and retried with back-off (customers/webhook_delivery.py), never on a
request's path.

Endpoints are the account's to manage (portal, customer API, console), each change audited.
A secret is kept as is, since it must sign; it is left out of the audit log (its name says
secret), and reading it back is recorded ("reveal_secret").
"""

import secrets
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.services import AnyRequest, audit_change, object_delete, snapshot
from customers.models import Account, ApiKey, WebhookDelivery, WebhookEndpoint, WebhookEvent
from customers.webhook_delivery import webhook_url_validate

EventType = WebhookEvent.Type
SECRET_PREFIX = "whsec_"  # noqa: S105 (what secrets start with, not one)
# How long a rotated-out secret keeps signing (a second v1 signature), for the switch-over.
PREVIOUS_SECRET_DAYS = 1
ENDPOINTS_PER_ACCOUNT = 20


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
        created = WebhookDelivery.objects.bulk_create(
            WebhookDelivery(event=record, endpoint=endpoint, next_attempt_at=now)
            for endpoint in endpoints
            if not endpoint.events or event in endpoint.events
        )
        if created:
            transaction.on_commit(_deliver_soon)
    return record


def _deliver_soon() -> None:
    """Ask a worker to deliver what is due now (the periodic sweep would, a little later)."""
    from customers.webhook_delivery import deliveries_due_kick

    deliveries_due_kick()


def key_revoked_emit(api_key: ApiKey, *, reason: str) -> None:
    """`api_key.revoked` for a key just revoked (inside the revoking transaction): `reason`
    is revoked, rotated, project_archived or member_removed."""
    revoked_at = api_key.revoked_at or timezone.now()
    webhook_emit(
        account_id=api_key.account_id,
        event=EventType.KEY_REVOKED,
        data={
            "key_id": api_key.key_id,
            "name": api_key.name,
            "project": api_key.project_id,
            "revoked_at": revoked_at.isoformat(),
            "reason": reason,
        },
    )


class WebhookError(ValueError):
    """A change the rules refuse; its message is for the person who asked."""


def secret_generate() -> str:
    """`whsec_` and 43 URL-safe characters (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _events_check(events: Iterable[str]) -> list[str]:
    chosen = sorted(set(events))
    unknown = [name for name in chosen if name not in EventType.values]
    if unknown:
        raise WebhookError(
            f"Unknown event type {unknown[0]!r}: one of {', '.join(EventType.values)}."
        )
    return chosen


def _url_check(url: str) -> str:
    try:
        webhook_url_validate(url)
    except ValidationError as exc:
        raise WebhookError(exc.messages[0]) from None
    return url


def webhook_endpoint_create(
    *,
    account: Account,
    url: str,
    events: Iterable[str] = (),
    description: str = "",
    enabled: bool = True,
    actor: object = None,
    request: AnyRequest | None = None,
) -> WebhookEndpoint:
    """A new endpoint with a new secret (its `secret`, for the caller to show); `events`
    empty: every type."""
    data = {"url": _url_check(url), "events": _events_check(events)}
    with transaction.atomic():
        Account.objects.select_for_update().get(pk=account.pk)
        if WebhookEndpoint.objects.filter(account=account).count() >= ENDPOINTS_PER_ACCOUNT:
            raise WebhookError(f"An account has at most {ENDPOINTS_PER_ACCOUNT} endpoints.")
        endpoint = WebhookEndpoint.objects.create(
            account=account,
            description=description,
            enabled=enabled,
            secret=secret_generate(),
            **data,
        )
        audit_change(actor, "create", endpoint, None, snapshot(endpoint), request)
    return endpoint


def webhook_endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    data: Mapping[str, Any],
    actor: object = None,
    request: AnyRequest | None = None,
) -> WebhookEndpoint:
    """Change its url, events, description or enabled (new events apply to new events)."""
    allowed = {"url", "events", "description", "enabled"}
    if set(data) - allowed:
        raise WebhookError(f"Only {', '.join(sorted(allowed))} can be changed.")
    changes = dict(data)
    if "url" in changes:
        changes["url"] = _url_check(changes["url"])
    if "events" in changes:
        changes["events"] = _events_check(changes["events"])
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        before = snapshot(locked)
        for name, value in changes.items():
            setattr(locked, name, value)
        locked.save()
        audit_change(actor, "update", locked, before, snapshot(locked), request)
    return locked


def webhook_endpoint_rotate_secret(
    *, endpoint: WebhookEndpoint, actor: object = None, request: AnyRequest | None = None
) -> WebhookEndpoint:
    """A new secret; the one it replaces signs too (a second v1) for a day, so a receiver
    switched over within the day misses nothing."""
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        before = snapshot(locked)
        locked.previous_secret = locked.secret
        locked.previous_secret_expires_at = timezone.now() + timedelta(days=PREVIOUS_SECRET_DAYS)
        locked.secret = secret_generate()
        locked.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
        audit_change(actor, "rotate_secret", locked, before, snapshot(locked), request)
    return locked


def webhook_endpoint_reveal_secret(
    *, endpoint: WebhookEndpoint, actor: object = None, request: AnyRequest | None = None
) -> str:
    """The endpoint's secret, its reading recorded in the audit log."""
    with transaction.atomic():
        state = snapshot(endpoint)
        audit_change(actor, "reveal_secret", endpoint, state, state, request)
    return endpoint.secret


def webhook_endpoint_delete(
    *, endpoint: WebhookEndpoint, actor: object = None, request: AnyRequest | None = None
) -> None:
    """Delete the endpoint and its deliveries (pending ones are never sent)."""
    object_delete(actor=actor, instance=endpoint, request=request)


def webhook_delivery_replay(
    *, delivery: WebhookDelivery, actor: object = None, request: AnyRequest | None = None
) -> WebhookDelivery:
    """Send the delivery again now (the same event, with a fresh signature), whatever came
    of it before; an attempt after the event's day that fails leaves it failed again."""
    with transaction.atomic():
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        before = snapshot(locked)
        locked.status = WebhookDelivery.Status.PENDING
        locked.next_attempt_at = timezone.now()
        locked.save(update_fields=["status", "next_attempt_at"])
        audit_change(
            actor,
            "replay",
            locked,
            before,
            snapshot(locked),
            request,
            account_id=locked.endpoint.account_id,
        )
        transaction.on_commit(_deliver_soon)
    return locked
