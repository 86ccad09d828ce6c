"""Prepaid credit: grants, the append-only ledger's movements, and the gateway's counter.

The ledger (CreditEntry) in PostgreSQL is the truth; a balance is a sum of it, never a column.
The gateway admits a prepaid account's request against a counter in Redis
(metering/credits.py): billing adds to it every movement that changes what is available (a
grant +, an expiry, a refund -, a correction +/-), each exactly once (metering/lua/
credit_apply.lua keeps the ids applied), right after the movement commits and again from the
sweep until `applied_at` says it is in. Usage is not added: the gateway took it off at settle.
Billing draws usage down from the grants later, from the rollups (billing/drawdown.py). If
Redis lost its data (the epoch key is gone) the sweep rebuilds every prepaid counter from the
ledger first, then applies. docs/billing.md, "Prepaid credits".
"""

import functools
import logging
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import redis
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from audit.services import AnyRequest, audit_change, snapshot
from billing.models import CreditEntry, CreditGrant, CreditSettings
from billing.money import AMOUNT_PLACES, CONTEXT, money_text
from billing.rating import FEE_EXEMPT
from billing.selectors import billing_currency, credit_remaining
from customers.models import Account
from customers.webhooks import webhook_emit
from metering.credits import CREDIT_EPOCH, credit_held_key, credit_keys
from metering.redis_clients import redis_connect
from metering.redis_scripts import SCRIPTS, run

log = logging.getLogger(__name__)

# The gateway's counter holds at most 2^63 - 1 pico-units (about 9.2 million); no one grant
# or correction comes near it.
MAX_AMOUNT = Decimal(9_000_000)
_UNDRAWN = (Path(__file__).parent / "sql" / "credit_undrawn.sql").read_text()
_BALANCES = ~Q(kind=CreditEntry.Kind.USAGE)


class CreditError(Exception):
    """A credit movement billing refuses; its text says what to do instead."""


def credit_grant(
    *,
    account: Account,
    amount: Decimal,
    source: str,
    effective_from: datetime | None = None,
    expires_at: datetime | None = None,
    priority: int = 0,
    reference: str = "",
    actor: object,
    memo: str = "",
    request: AnyRequest | None = None,
) -> CreditGrant:
    """Grant `amount` of billing's currency to `account`, audited, with its ledger entry.

    A `reference` (what paid for it, e.g. a Stripe Checkout session id) grants once: another
    call with the same reference, at once or later, returns the first grant and grants
    nothing.
    """
    amount = _amount_checked(amount)
    if source not in CreditGrant.Source.values:
        raise CreditError(f"Unknown credit source {source!r}: one of {CreditGrant.Source.values}.")
    effective_from = effective_from or timezone.now()
    if expires_at is not None and expires_at <= effective_from:
        raise CreditError("A grant must expire after it takes effect.")
    if reference and (granted := _granted(account, reference)) is not None:
        return granted
    try:
        with transaction.atomic():
            grant = CreditGrant.objects.create(
                account=account,
                amount=amount,
                currency=billing_currency(),
                source=source,
                effective_from=effective_from,
                expires_at=expires_at,
                priority=priority,
                reference=reference,
                memo=memo,
            )
            entry_append(grant, CreditEntry.Kind.GRANT, amount, actor=actor, memo=memo)
            audit_change(actor, "credit_grant", grant, None, snapshot(grant), request)
    except IntegrityError:
        # The same reference granted by a call that committed first (a webhook delivered twice
        # at once): its grant is the one.
        granted = _granted(account, reference) if reference else None
        if granted is None:
            raise
        return granted
    return grant


def credit_refund(
    *,
    grant: CreditGrant,
    amount: Decimal,
    actor: object,
    memo: str = "",
    request: AnyRequest | None = None,
) -> CreditEntry:
    """Take `amount` of what is left of `grant` off the balance: money paid back to the
    customer (outside the ledger, e.g. a Stripe refund)."""
    amount = _amount_checked(amount)
    with transaction.atomic():
        grant = CreditGrant.objects.select_for_update().get(pk=grant.pk)
        _within_remaining(grant, amount, "refund")
        entry = entry_append(grant, CreditEntry.Kind.REFUND, -amount, actor=actor, memo=memo)
        audit_change(
            actor, "credit_refund", entry, None, snapshot(entry), request, grant.account_id
        )
    return entry


def credit_correct(
    *,
    grant: CreditGrant,
    amount: Decimal,
    actor: object,
    memo: str,
    request: AnyRequest | None = None,
) -> CreditEntry:
    """Staff's adjustment of `grant` by a signed `amount`; it may not take the grant below
    zero. Entries are never edited: a mistake is corrected by another correction."""
    if not memo.strip():
        raise CreditError("Say why in the memo: a correction is read later by someone else.")
    if amount == 0:
        raise CreditError(
            "A correction of zero changes nothing: enter a positive or negative amount."
        )
    _amount_checked(abs(amount))
    with transaction.atomic():
        grant = CreditGrant.objects.select_for_update().get(pk=grant.pk)
        if amount < 0:
            _within_remaining(grant, -amount, "correction")
        entry = entry_append(grant, CreditEntry.Kind.CORRECTION, amount, actor=actor, memo=memo)
        audit_change(
            actor, "credit_correct", entry, None, snapshot(entry), request, grant.account_id
        )
    return entry


def _granted(account: Account, reference: str) -> CreditGrant | None:
    grant = CreditGrant.objects.filter(reference=reference).first()
    if grant is not None and grant.account_id != account.pk:
        raise CreditError(f"{reference} granted credit to another account already.")
    return grant


def _amount_checked(amount: Decimal) -> Decimal:
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise CreditError("Enter the amount as a number.")
    if amount <= 0:
        raise CreditError("Enter a positive amount.")
    if amount > MAX_AMOUNT:
        raise CreditError(f"Enter at most {MAX_AMOUNT:,} at a time.")
    if amount != amount.quantize(Decimal(1).scaleb(-AMOUNT_PLACES), context=CONTEXT):
        raise CreditError(f"Enter at most {AMOUNT_PLACES} decimal places.")
    return amount


def _within_remaining(grant: CreditGrant, amount: Decimal, what: str) -> None:
    left = credit_remaining(grant=grant)
    if amount > left:
        currency = grant.currency
        raise CreditError(
            f"The {what} of {money_text(amount, currency)} is more than is left of the grant: "
            f"enter at most {money_text(left, currency, places=AMOUNT_PLACES)}."
        )


def entry_append(
    grant: CreditGrant, kind: str, amount: Decimal, *, actor: object, memo: str
) -> CreditEntry:
    """Append a movement of `grant` and add it to the gateway's counter once it commits."""
    entry = CreditEntry.objects.create(
        account_id=grant.account_id,
        grant=grant,
        kind=kind,
        amount=amount,
        actor=_actor_text(actor),
        memo=memo,
    )
    account_id = grant.account_id
    transaction.on_commit(lambda: _sync_quietly(account_id))
    return entry


def _actor_text(actor: object) -> str:
    if actor is None:
        return "system"
    username = getattr(actor, "get_username", None)
    return str(username() if callable(username) else actor)[:200]


def _sync_quietly(account_id: int) -> None:
    """Right after a commit: a Redis that does not answer now is the sweep's to catch up."""
    try:
        credits_sync(account_id=account_id)
    except redis.RedisError:
        log.warning("credit movement not yet in Redis", extra={"account_id": account_id})


def credits_redis() -> redis.Redis:
    """The Redis of the gateway's counters: one client (and pool) per process and address."""
    return _client(settings.REDIS_URL)


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis_connect(url, socket_timeout=5, socket_connect_timeout=5)


def pico(amount: Decimal) -> int:
    """An amount (12 places at most) in the counter's integer pico-units, exactly."""
    return int(CONTEXT.scaleb(amount, AMOUNT_PLACES))


def credits_sync(*, account_id: int | None = None, client: redis.Redis | None = None) -> int:
    """Add the movements not yet in the gateway's counters (of one account, or all), each
    once; returns how many were marked applied. A Redis that lost its counters is rebuilt
    from the ledger first (credits_rebuild)."""
    client = client or credits_redis()
    if not client.exists(CREDIT_EPOCH):
        credits_rebuild(client=client)
    now = timezone.now()
    pending = CreditEntry.objects.filter(
        _BALANCES, applied_at__isnull=True, grant__effective_from__lte=now
    )
    if account_id is not None:
        pending = pending.filter(account_id=account_id)
    by_account: dict[int, list[tuple[int, Decimal]]] = defaultdict(list)
    for pk, account, amount in pending.order_by("pk").values_list("pk", "account_id", "amount"):
        by_account[account].append((pk, amount))
    applied = 0
    for account, entries in by_account.items():
        args: list[object] = []
        for pk, amount in entries:
            args += [pk, pico(amount)]
        run(client, SCRIPTS["credit_apply"], credit_keys(account), args)
        applied += CreditEntry.objects.filter(
            pk__in=[pk for pk, _ in entries], applied_at__isnull=True
        ).update(applied_at=now)
    return applied


def credits_rebuild(*, client: redis.Redis, now: datetime | None = None) -> int:
    """Set every prepaid account's counter from the ledger, after Redis lost its data: its
    balance (grants in effect, less what was drawn, expired, refunded, corrected) less the
    rated cost of its usage not yet drawn down; the applied set lists the movements counted.
    Then the epoch marks the counters as present again. Returns the accounts rebuilt."""
    from billing.drawdown import drawn_through

    now = now or timezone.now()
    prepaid = list(
        Account.objects.filter(billing_mode=Account.Billing.PREPAID).values_list("pk", flat=True)
    )
    in_effect = CreditEntry.objects.filter(
        account_id__in=prepaid, grant__isnull=False, grant__effective_from__lte=now
    )
    balances = dict(
        in_effect.values("account_id")
        .annotate(total=Sum("amount"))
        .values_list("account_id", "total")
    )
    applied: dict[int, list[int]] = defaultdict(list)
    for pk, account in in_effect.filter(_BALANCES).values_list("pk", "account_id"):
        applied[account].append(pk)
    undrawn = _undrawn(prepaid, since=drawn_through(), until=now)
    for account in prepaid:
        balance, set_key = credit_keys(account)
        counter = pico(balances.get(account, Decimal(0))) - pico(undrawn.get(account, Decimal(0)))
        with client.pipeline(transaction=True) as pipe:
            pipe.delete(set_key)
            # Reservations held before the loss are not the rebuilt counter's to give back.
            pipe.delete(credit_held_key(account))
            pipe.set(balance, counter)
            for start in range(0, len(applied[account]), 1000):
                pipe.sadd(set_key, *applied[account][start : start + 1000])
            pipe.execute()
    client.set(CREDIT_EPOCH, now.isoformat())
    log.warning("prepaid credit counters rebuilt from the ledger", extra={"accounts": len(prepaid)})
    return len(prepaid)


def _undrawn(accounts: list[int], *, since: datetime | None, until: datetime) -> dict[int, Decimal]:
    """The rated cost of each account's usage that started in [since, until): not drawn
    down yet, but taken off the counter by the gateway."""
    if not accounts:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            _UNDRAWN,
            {
                "accounts": accounts,
                "since": since,
                "until": until,
                "currency": billing_currency(),
                "fee_exempt": FEE_EXEMPT,
            },
        )
        return {account: total for account, total in cursor.fetchall()}


def credits_balance_watch() -> int:
    """Tell prepaid accounts' endpoints when their balance falls below their low-balance
    threshold (credits.balance_low) or to nothing (credits.exhausted), once per crossing:
    the band last seen is kept (CreditSettings.state) and a top-up resets it. Reads the
    gateway's counters (what admission sees); returns the events raised."""
    client = credits_redis()
    if not client.exists(CREDIT_EPOCH):
        return 0
    accounts = list(
        Account.objects.filter(billing_mode=Account.Billing.PREPAID).values_list("pk", flat=True)
    )
    counters = client.mget([credit_keys(account)[0] for account in accounts]) if accounts else []
    raised = 0
    for account, value in zip(accounts, counters, strict=True):
        balance = CONTEXT.scaleb(Decimal(int(value or 0)), -AMOUNT_PLACES)
        raised += _balance_band_note(account, balance)
    return raised


_SEVERITY = {
    CreditSettings.State.OK: 0,
    CreditSettings.State.LOW: 1,
    CreditSettings.State.EXHAUSTED: 2,
}
_EVENTS = {
    CreditSettings.State.LOW: "credits.balance_low",
    CreditSettings.State.EXHAUSTED: "credits.exhausted",
}


def _balance_band_note(account_id: int, balance: Decimal) -> int:
    with transaction.atomic():
        prefs, _ = CreditSettings.objects.select_for_update().get_or_create(account_id=account_id)
        if balance <= 0:
            band = CreditSettings.State.EXHAUSTED
        elif balance < prefs.low_balance_threshold:
            band = CreditSettings.State.LOW
        else:
            band = CreditSettings.State.OK
        if band == prefs.state:
            return 0
        worse = _SEVERITY[band] > _SEVERITY[CreditSettings.State(prefs.state)]
        prefs.state = band
        prefs.save(update_fields=["state"])
        if not worse:
            return 0
        webhook_emit(
            account_id=account_id,
            event=_EVENTS[band],
            data={
                "balance": str(balance),
                "currency": billing_currency(),
                "low_balance_threshold": str(prefs.low_balance_threshold),
            },
        )
    return 1
