"""Stripe's news about our invoices, from its webhooks: each event applied once.

Payment policy (docs/billing.md, "Stripe"):
- `invoice.paid` (or `invoice.payment_succeeded`) marks the invoice paid. Paid is final: news
  of an earlier failed attempt arriving late changes nothing.
- `invoice.payment_failed` marks it failed. While Stripe still plans another attempt
  (`next_payment_attempt` set: its retry schedule, with dunning e-mails) the account keeps
  working. When Stripe gives up (`next_payment_attempt` null) the account is suspended: the
  gateway refuses its keys within GATEWAY["KEY_CACHE_SECONDS"].
- A later payment does not lift a suspension; staff reactivate the account, since a
  suspension may have other reasons too.

Credits bought (billing/checkout.py): `checkout.session.completed` (and, for payment methods
that settle later, `checkout.session.async_payment_succeeded`) grants what a paid session
bought; `payment_intent.succeeded` grants an automatic top-up. Both read the object back from
Stripe and grant once per session or payment, whichever event arrives first.
"""

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q

from billing.checkout import checkout_completed, topup_payment_succeeded
from billing.models import Invoice, StripeEvent
from customers.models import Account
from customers.services import account_status_set

log = logging.getLogger(__name__)

# The audit log's actor for what Stripe's events do.
ACTOR = "stripe"

Payload = dict[str, Any]


def stripe_event_apply(*, event: Payload) -> bool:
    """Store a verified event and apply it, both or neither; False for one seen before."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                StripeEvent.objects.create(event_id=event["id"], type=event["type"], payload=event)
        except IntegrityError:
            return False
        handler = _HANDLERS.get(event["type"])
        if handler is not None:
            handler(event)
    return True


def _invoice_paid(event: Payload) -> None:
    invoice = _invoice_locked(event)
    if invoice is None or invoice.payment == Invoice.Payment.PAID:
        return
    moments = _data(event).get("status_transitions") or {}
    paid_at = moments.get("paid_at") or event["created"]
    Invoice.objects.filter(pk=invoice.pk).update(
        payment=Invoice.Payment.PAID, paid_at=datetime.fromtimestamp(paid_at, UTC)
    )


def _invoice_payment_failed(event: Payload) -> None:
    invoice = _invoice_locked(event)
    if invoice is None or invoice.payment == Invoice.Payment.PAID:
        return
    Invoice.objects.filter(pk=invoice.pk).update(payment=Invoice.Payment.FAILED)
    if _data(event).get("next_payment_attempt") is None:
        _account_suspend(invoice, event)


def _account_suspend(invoice: Invoice, event: Payload) -> None:
    account = Account.objects.select_for_update().get(pk=invoice.account_id)
    if account.status == Account.Status.SUSPENDED:
        return
    account_status_set(account=account, status=Account.Status.SUSPENDED, actor=ACTOR)
    log.warning(
        "account suspended: stripe gave up collecting an invoice",
        extra={"account_id": account.pk, "invoice": invoice.number, "event": event["id"]},
    )


def _invoice_locked(event: Payload) -> Invoice | None:
    """Our invoice the event is about: by its Stripe id, or by our id in its metadata (an
    event may overtake the push that stores the Stripe id)."""
    remote = _data(event)
    ours = str((remote.get("metadata") or {}).get("tf_invoice_id", ""))
    match = Q(stripe_invoice_id=remote["id"])
    if ours.isdigit():
        match |= Q(pk=int(ours), stripe_invoice_id="")
    invoice = Invoice.objects.select_for_update().filter(match).first()
    if invoice is None:
        log.info("stripe event about no invoice of ours", extra={"event": event["id"]})
    return invoice


def _checkout_completed(event: Payload) -> None:
    checkout_completed(session_id=_data(event)["id"])


def _payment_intent_succeeded(event: Payload) -> None:
    topup_payment_succeeded(payment_intent_id=_data(event)["id"])


def _data(event: Payload) -> Payload:
    data: Payload = event["data"]["object"]
    return data


_HANDLERS: dict[str, Callable[[Payload], None]] = {
    "invoice.paid": _invoice_paid,
    "invoice.payment_succeeded": _invoice_paid,
    "invoice.payment_failed": _invoice_payment_failed,
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_completed,
    "payment_intent.succeeded": _payment_intent_succeeded,
}
