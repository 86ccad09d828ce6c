"""Buying credits: Stripe Checkout for a purchase, off-session charges for automatic top-ups.

A purchase (docs/billing.md, "Prepaid credits"):
1. `checkout_start` makes a Stripe Checkout Session for the amount in billing's currency, for
   the account's Stripe customer, with our account id and purpose in its metadata, and saves
   the card for later (`setup_future_usage=off_session`); the customer pays on Stripe's page.
2. Stripe's signed `checkout.session.completed` (billing/webhooks.py, stored once per event by
   billing/stripe_events.py) lands in `checkout_completed`, which reads the session back from
   Stripe (the event's body is not trusted for the amount) and grants the credits with the
   session's id as the grant's reference: one grant per session however often, and however
   concurrently, Stripe delivers the news (`credit_grant` grants once per reference).

An automatic top-up (`auto_topups_run`, a Celery task every minute) charges the customer's
saved card off-session when a prepaid account's balance is under its threshold, and grants
the PaymentIntent's amount with its id as the reference, never past the month's cap. One runs
at a time per account (an advisory lock held across the charge), and its idempotency key is
made of the account, the month and the number of attempts so far, so a run that dies after
Stripe charged replays the same charge and grants it (and Stripe's `payment_intent.succeeded`
grants it too, once). A declined card is recorded in the account's audit log
(`auto_topup_failed`) and not tried again for BACKOFF.
"""

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
import stripe
from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone

from audit.models import AuditEntry
from audit.services import audit_change, audit_record, snapshot
from billing.credits import credit_grant, credits_redis
from billing.models import CreditGrant, CreditSettings
from billing.money import AMOUNT_PLACES, CONTEXT, from_minor, to_minor
from billing.selectors import credit_balance
from billing.stripe_sync import StripeNotConfigured, stripe_client, stripe_customer_ensure
from customers.models import Account
from metering.credits import CREDIT_EPOCH, credit_keys

log = logging.getLogger(__name__)

# What one purchase may be, in billing's currency.
PURCHASE_MIN = Decimal("5")
PURCHASE_MAX = Decimal("10000")
# After a declined automatic top-up, the next try waits this long.
BACKOFF = timedelta(hours=6)
# The audit log's actor for grants paid through Stripe.
ACTOR = "stripe"
# Metadata that marks our own sessions and payments; other Stripe payments are ignored.
PURPOSE_PURCHASE = "credits"
PURPOSE_TOPUP = "auto_topup"
FAILED = "auto_topup_failed"
_TOPUP_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('billing.topup'), %s)"


class CheckoutError(ValueError):
    """A purchase that cannot start; the message is for the customer."""


PREPAID_ONLY = (
    "This account pays for its usage by invoice each month, so it has no use for credits. "
    "Ask us to move it to prepaid billing to buy credits."
)


@dataclass(frozen=True, slots=True)
class TopupSettings:
    """What an account's automatic top-up is set to, in billing's currency."""

    enabled: bool
    threshold: Decimal
    amount: Decimal
    monthly_cap: Decimal


def purchase_amount_check(amount: Decimal) -> Decimal:
    """The amount as bought (whole minor units, within the bounds), else CheckoutError."""
    currency = settings.BILLING.currency
    if not amount.is_finite() or from_minor(to_minor(amount, currency), currency) != amount:
        raise CheckoutError(f"Give the amount in whole {currency} cents.")
    if not PURCHASE_MIN <= amount <= PURCHASE_MAX:
        raise CheckoutError(
            f"Buy between {PURCHASE_MIN:,} and {PURCHASE_MAX:,} {currency} of credits at a time."
        )
    return amount


def checkout_start(
    account: Account,
    amount: Decimal,
    *,
    success_url: str,
    cancel_url: str,
    actor: Any,
    request_key: str = "",
) -> str:
    """A Stripe Checkout Session buying `amount` of credits for the account; its URL.

    `request_key` names the customer's one attempt (the form's): sent twice, it makes one
    session. `success_url` may hold `{CHECKOUT_SESSION_ID}`, which Stripe fills in.
    """
    if account.billing_mode != Account.Billing.PREPAID:
        # Only prepaid usage draws grants down: credits bought here would never be used.
        raise CheckoutError(PREPAID_ONLY)
    amount = purchase_amount_check(amount)
    currency = settings.BILLING.currency
    try:
        client = stripe_client()
        customer = stripe_customer_ensure(account_id=account.pk, client=client)
        session = client.v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "customer": customer,
                "client_reference_id": str(account.pk),
                "line_items": [
                    {
                        "price_data": {
                            "currency": currency.lower(),
                            "unit_amount": to_minor(amount, currency),
                            "product_data": {"name": "Token Factory credits"},
                        },
                        "quantity": 1,
                    }
                ],
                "payment_intent_data": {
                    "setup_future_usage": "off_session",
                    "metadata": {"tf_account_id": str(account.pk), "tf_purpose": "checkout"},
                },
                "metadata": {
                    "tf_account_id": str(account.pk),
                    "tf_purpose": PURPOSE_PURCHASE,
                    "tf_actor": _actor_name(actor),
                },
                "success_url": success_url,
                "cancel_url": cancel_url,
            },
            options={"idempotency_key": f"tf-checkout-{account.pk}-{request_key or uuid.uuid4()}"},
        )
    except StripeNotConfigured:
        raise CheckoutError("Buying credits is not available on this service.") from None
    except stripe.StripeError:
        log.exception("stripe checkout could not start", extra={"account_id": account.pk})
        raise CheckoutError("The payment could not be started; try again in a minute.") from None
    log.info(
        "checkout started",
        extra={"account_id": account.pk, "checkout_session": session.id, "amount": str(amount)},
    )
    return str(session.url)


def checkout_completed(*, session_id: str) -> CreditGrant | None:
    """Grant what a paid Checkout Session of ours bought; None for one we grant nothing for.

    The session is read back from Stripe: only a complete, paid session we made, in billing's
    currency, for an account we have, grants its `amount_total`.
    """
    session = stripe_client().v1.checkout.sessions.retrieve(session_id)
    metadata = _metadata(session.metadata)
    if metadata.get("tf_purpose") != PURPOSE_PURCHASE:
        return None
    if session.status != "complete" or session.payment_status != "paid":
        log.info("checkout session not paid yet", extra={"checkout_session": session.id})
        return None
    account = _paying_account(metadata, session.currency or "", session.id)
    if account is None:
        return None
    currency = settings.BILLING.currency
    return credit_grant(
        account=account,
        amount=from_minor(int(session.amount_total or 0), currency),
        source=CreditGrant.Source.PURCHASE,
        reference=session.id,
        actor=ACTOR,
        memo=f"Bought with Stripe Checkout by {metadata.get('tf_actor') or 'a member'}",
    )


def topup_payment_succeeded(*, payment_intent_id: str) -> CreditGrant | None:
    """Grant an automatic top-up Stripe charged (its news, for a run that died after the
    charge); None for a payment that is not one, or not succeeded."""
    intent = stripe_client().v1.payment_intents.retrieve(payment_intent_id)
    metadata = _metadata(intent.metadata)
    if metadata.get("tf_purpose") != PURPOSE_TOPUP or intent.status != "succeeded":
        return None
    account = _paying_account(metadata, intent.currency, intent.id)
    if account is None:
        return None
    return _topup_grant(account, intent)


def _metadata(found: Any) -> dict[str, str]:
    data = found.to_dict() if found is not None else {}
    return {str(key): str(value) for key, value in data.items()}


def _paying_account(metadata: dict[str, str], currency: str, stripe_id: str) -> Account | None:
    ours = metadata.get("tf_account_id", "")
    account = Account.objects.filter(pk=int(ours)).first() if ours.isdigit() else None
    if account is None:
        log.error("a stripe payment for no account of ours", extra={"stripe_id": stripe_id})
        return None
    if currency.upper() != settings.BILLING.currency:
        log.error(
            "a stripe payment in another currency than billing's: not granted",
            extra={"stripe_id": stripe_id, "currency": currency},
        )
        return None
    return account


def _topup_grant(account: Account, intent: stripe.PaymentIntent) -> CreditGrant:
    return credit_grant(
        account=account,
        amount=from_minor(intent.amount, settings.BILLING.currency),
        source=CreditGrant.Source.PURCHASE,
        reference=intent.id,
        actor=ACTOR,
        memo="Automatic top-up",
    )


# Settings


def topup_settings(account: Account) -> TopupSettings:
    found = CreditSettings.objects.filter(account=account).first() or CreditSettings()
    return TopupSettings(
        enabled=found.auto_topup_enabled,
        threshold=found.auto_topup_threshold,
        amount=found.auto_topup_amount,
        monthly_cap=found.auto_topup_monthly_cap,
    )


def topup_problems(wanted: TopupSettings) -> list[tuple[str, str]]:
    """What stops an enabled top-up from running, as (field, message): an amount a purchase
    may be, a threshold above zero, and a cap that allows at least one top-up a month."""
    if not wanted.enabled:
        return []
    try:
        purchase_amount_check(wanted.amount)
    except CheckoutError as error:
        return [("amount", str(error))]
    problems = []
    if wanted.threshold <= 0:
        problems.append(("threshold", "Give a balance above zero to top up under."))
    if wanted.monthly_cap < wanted.amount:
        problems.append(("monthly_cap", "The cap must allow at least one top-up."))
    return problems


def topup_configure(
    *, account: Account, wanted: TopupSettings, actor: Any, request: Any = None
) -> None:
    """Set the account's automatic top-up (audited); CheckoutError for one that cannot run."""
    problems = topup_problems(wanted)
    if problems:
        raise CheckoutError(problems[0][1])
    with transaction.atomic():
        found, _ = CreditSettings.objects.select_for_update().get_or_create(account=account)
        before = snapshot(found)
        found.auto_topup_enabled = wanted.enabled
        found.auto_topup_threshold = wanted.threshold
        found.auto_topup_amount = wanted.amount
        found.auto_topup_monthly_cap = wanted.monthly_cap
        found.save()
        audit_change(actor, "update", found, before, snapshot(found), request=request)


# Automatic top-ups


def auto_topups_run(*, now: datetime | None = None) -> dict[str, int]:
    """Top up every prepaid account whose balance is under its threshold; counts by outcome.

    One account's failure is logged and the others go on. Stripe out of reach or refusing
    our key stops the run (every account would fail alike); the next run tries again, with
    the same idempotency keys.
    """
    now = now or timezone.now()
    due = CreditSettings.objects.filter(
        auto_topup_enabled=True, account__billing_mode=Account.Billing.PREPAID
    ).values_list("account_id", flat=True)
    client = stripe_client()
    counts: dict[str, int] = {}
    for account_id in due:
        try:
            outcome = auto_topup(account_id=account_id, now=now, client=client)
        except (stripe.APIConnectionError, stripe.AuthenticationError):
            raise
        except stripe.StripeError:
            log.exception("auto top-up failed at stripe", extra={"account_id": account_id})
            outcome = "failed"
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def auto_topup(*, account_id: int, now: datetime, client: stripe.StripeClient) -> str:
    """One account's top-up if it is due: "topped_up", "declined", or why nothing was done
    ("busy", "off", "not_needed", "backing_off", "capped", "no_card")."""
    with transaction.atomic():
        if not _topup_lock(account_id):
            return "busy"
        account = Account.objects.get(pk=account_id)
        wanted = topup_settings(account)
        if not wanted.enabled or account.billing_mode != Account.Billing.PREPAID:
            return "off"
        if credit_available(account) >= wanted.threshold:
            return "not_needed"
        if _recent_failure(account_id, now) is not None:
            return "backing_off"
        month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        granted = _month_topups(account_id, month)
        if granted + wanted.amount > wanted.monthly_cap:
            log.info("auto top-up capped for the month", extra={"account_id": account_id})
            return "capped"
        customer = stripe_customer_ensure(account_id=account_id, client=client)
        card = _saved_card(client, customer)
        if card is None:
            _failure_record(account, wanted.amount, "no_card", "No saved card to charge.")
            return "no_card"
        attempt = _month_attempts(account_id, month)
        return _charge(client, account, wanted.amount, customer, card, f"{month:%Y%m}-{attempt}")


def _charge(
    client: stripe.StripeClient,
    account: Account,
    amount: Decimal,
    customer: str,
    card: str,
    attempt: str,
) -> str:
    currency = settings.BILLING.currency
    try:
        intent = client.v1.payment_intents.create(
            params={
                "amount": to_minor(amount, currency),
                "currency": currency.lower(),
                "customer": customer,
                "payment_method": card,
                "confirm": True,
                "off_session": True,
                "metadata": {"tf_account_id": str(account.pk), "tf_purpose": PURPOSE_TOPUP},
            },
            options={"idempotency_key": f"tf-topup-{account.pk}-{attempt}"},
        )
    except stripe.CardError as error:
        _failure_record(account, amount, error.code or "card_error", error.user_message or "")
        return "declined"
    if intent.status != "succeeded":
        # Off-session, a card that asks for authentication cannot be charged: the customer
        # buys on the page instead (Stripe emails them where its settings say so).
        _failure_record(account, amount, intent.status, "The card asks for authentication.")
        return "declined"
    _topup_grant(account, intent)
    log.info("auto top-up", extra={"account_id": account.pk, "payment_intent": intent.id})
    return "topped_up"


def credit_available(account: Account) -> Decimal:
    """What admission sees: the gateway's counter, which takes usage off as requests settle
    (the ledger's balance lags it until usage is drawn down); the ledger's balance while
    Redis has no counters (lost, being rebuilt) or does not answer."""
    try:
        client = credits_redis()
        if client.exists(CREDIT_EPOCH):
            counter = client.get(credit_keys(account.pk)[0])
            return CONTEXT.scaleb(Decimal(int(counter or 0)), -AMOUNT_PLACES)
    except redis.RedisError:
        log.warning("credit counter unreadable: the ledger's balance is used")
    return credit_balance(account)


def _topup_lock(account_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(_TOPUP_LOCK, [account_id % 2**31])
        return bool(cursor.fetchone()[0])


def _topup_grants(account_id: int) -> QuerySet[CreditGrant]:
    """Automatic top-ups' grants: purchases whose reference is a PaymentIntent (a Checkout's
    is its session, `cs_...`)."""
    return CreditGrant.objects.filter(
        account_id=account_id, source=CreditGrant.Source.PURCHASE, reference__startswith="pi_"
    )


def _month_topups(account_id: int, month: datetime) -> Decimal:
    total = _topup_grants(account_id).filter(created_at__gte=month).aggregate(s=Sum("amount"))
    return total["s"] or Decimal(0)


def _failures(account_id: int) -> QuerySet[AuditEntry]:
    return AuditEntry.objects.filter(account_id=account_id, action=FAILED)


def _month_attempts(account_id: int, month: datetime) -> int:
    """Top-ups granted and failed this month: the next attempt's number in its key."""
    grants = _topup_grants(account_id).filter(created_at__gte=month).count()
    return grants + _failures(account_id).filter(at__gte=month).count()


def _recent_failure(account_id: int, now: datetime) -> AuditEntry | None:
    return _failures(account_id).filter(at__gte=now - BACKOFF).order_by("-at").first()


def topup_last_failure(account: Account) -> AuditEntry | None:
    """The account's latest failed automatic top-up, for the portal to show."""
    return _failures(account.pk).order_by("-at").first()


def _failure_record(account: Account, amount: Decimal, code: str, message: str) -> None:
    currency = settings.BILLING.currency
    audit_record(
        actor=None,
        action=FAILED,
        obj_type="customers.account",
        obj_id=account.pk,
        before=None,
        after={
            "amount": str(from_minor(to_minor(amount, currency), currency)),
            "currency": currency,
            "code": code,
            "message": message,
        },
    )
    log.warning(
        "auto top-up failed", extra={"account_id": account.pk, "code": code, "reason": message}
    )


def _saved_card(client: stripe.StripeClient, customer: str) -> str | None:
    """The card to charge: the customer's default, else the card saved most recently."""
    found = client.v1.customers.retrieve(customer)
    default = found.invoice_settings.default_payment_method if found.invoice_settings else None
    if default:
        return default if isinstance(default, str) else default.id
    cards = client.v1.payment_methods.list(params={"customer": customer, "type": "card"}).data
    newest = max(cards, key=lambda card: (card.created, card.id), default=None)
    return newest.id if newest is not None else None


def _actor_name(actor: Any) -> str:
    if isinstance(actor, str):
        return actor
    return str(getattr(actor, "email", "") or getattr(actor, "username", "") or "a member")
