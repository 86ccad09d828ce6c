"""Billing's invoices: closing a month, the invoice in progress, and credit notes
(docs/billing.md, "Invoices").

Closing a month takes the month's advisory lock (billing/jobs.py) and computes every account's
draft from the ledger (billing/invoicing.py builds each), stores, numbers and finalises it in
one transaction: a second run finalises nothing, and a worker killed mid-close leaves no draft
and no number taken. billing/closing.py runs these with an audit entry of their own.
"""

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import MAXYEAR, datetime
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone

from billing.invoicing import AccountPlan, Draft, Line, Period, UsageSum, draft_build
from billing.jobs import (
    DAY,
    grace,
    job_start,
    month_start,
    next_month,
    watermark,
    watermark_set,
)
from billing.models import Invoice, InvoiceLine, InvoiceNumber
from billing.money import from_minor
from billing.rating import PriceList, Quantities

# Re-exported for tests/billing/test_jobs_crash.py, whose worker process (a string it runs)
# reaches the jobs as attributes of this module.
from billing.rollups import rollups_run  # noqa: F401
from billing.selectors import billing_currency, price_list
from customers.models import Account

log = logging.getLogger(__name__)

_SQL = Path(__file__).parent / "sql"
_INVOICE_USAGE = (_SQL / "invoice_usage.sql").read_text()
_INVOICE_INCLUDED = (_SQL / "invoice_included.sql").read_text()
_LINE_COLUMNS = (
    "invoice_id, item, tier, model, price_book_id, quantity, unit_price, amount, amount_minor, "
    "usage_from, usage_to, stripe_item_id"
)


class InvoiceError(Exception):
    """A request billing refuses: an open period, an edit of a finalised invoice, ..."""


@dataclass(frozen=True, slots=True)
class CloseResult:
    period: Period
    # Invoices finalised by this run (0 when a previous run closed every account).
    finalised: int
    # Usage worth nothing for want of a price: (account_id, tier, model, tokens).
    unpriced: list[tuple[int, str, str, int]] = field(default_factory=list)
    # Accounts with usage in the ledger but no longer in customers_account: not invoiced.
    unknown_accounts: list[int] = field(default_factory=list)


def month_of(at: datetime) -> Period:
    """The calendar month (UTC) holding `at`: invoices' period."""
    if (at.year, at.month) == (MAXYEAR, 12):
        raise InvoiceError(f"{MAXYEAR}-12 ends past the last date there is")
    return Period(month_start(at), next_month(at))


def invoices_close(*, period_start: datetime, now: datetime | None = None) -> CloseResult:
    """Invoice every account with usage or a plan fee in the month of `period_start`.

    Once the grace window after the month has passed, in one transaction: compute each
    account's draft from the ledger, store it, number it from the gap-free counter and
    finalise it. Accounts already closed are left as they are, so a second run finalises
    nothing, and a run killed before its commit leaves no draft and no number taken.
    """
    now = now or timezone.now()
    period = month_of(period_start)
    if now < period.end + grace():
        raise InvoiceError(f"{period.start:%Y-%m} is open until {period.end + grace()}")
    invoices = Invoice.objects.filter(kind=Invoice.Kind.INVOICE, period_start=period.start)
    with transaction.atomic():
        job_start(f"billing.invoices:{period.start:%Y-%m}", wait=True)
        closed = set(
            invoices.filter(status=Invoice.Status.FINALISED).values_list("account_id", flat=True)
        )
        drafts = _drafts_compute(period, until=period.end)
        known = set(
            Account.objects.filter(pk__in=[d.account_id for d in drafts]).values_list(
                "pk", flat=True
            )
        )
        still_open = known - closed
        billable = [d for d in drafts if d.lines and d.account_id in still_open]
        _drafts_store(period, billable)
        finalised = _finalise(invoices.filter(status=Invoice.Status.DRAFT), now=now)
        closed_until = watermark("invoices")
        if closed_until is None or closed_until < period.end:
            watermark_set("invoices", period.end)
    unpriced = [(d.account_id, *item) for d in drafts for item in d.unpriced]
    for account_id, tier, model, tokens in unpriced:
        log.warning(
            "usage without a price",
            extra={"account_id": account_id, "tier": tier, "model": model, "tokens": tokens},
        )
    unknown = [d.account_id for d in drafts if d.account_id not in known]
    for account_id in unknown:
        log.warning("usage of an unknown account", extra={"account_id": account_id})
    return CloseResult(period, finalised, unpriced, unknown)


def invoices_close_due(*, now: datetime | None = None) -> CloseResult | None:
    """Close the last month once its grace window has passed; None when it is closed already."""
    now = now or timezone.now()
    due = month_of(month_start(now - grace()) - DAY)
    closed_until = watermark("invoices")
    if closed_until is not None and closed_until >= due.end:
        return None
    return invoices_close(period_start=due.start, now=now)


def invoice_preview(*, account: Account, now: datetime | None = None) -> Draft:
    """The current month's invoice of `account` as it stands at `now`; nothing is stored."""
    now = now or timezone.now()
    period = month_of(now)
    drafts = _drafts_compute(period, until=now, account_id=account.pk)
    return drafts[0] if drafts else Draft(account.pk, period, billing_currency())


def credit_note_issue(
    *,
    invoice: Invoice,
    memo: str,
    lines: Sequence[InvoiceLine] | None = None,
    amount_minor: int | None = None,
    now: datetime | None = None,
) -> Invoice:
    """Correct a finalised invoice: a finalised, numbered, negative document linked to it.

    Either whole `lines` of the invoice, whose charged minor units are reversed exactly, or
    an `amount_minor` (positive) credited as one line. The credits of an invoice never exceed
    its total.
    """
    if (lines is None) == (amount_minor is None):
        raise InvoiceError("credit either whole lines or an amount")
    now = now or timezone.now()
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.kind != Invoice.Kind.INVOICE or invoice.status != Invoice.Status.FINALISED:
            raise InvoiceError("only a finalised invoice can be corrected")
        credit_lines = (
            _credit_amount(invoice, amount_minor)
            if amount_minor is not None
            else _credit_lines(invoice, lines or [])
        )
        total_minor = sum(line.amount_minor for line in credit_lines)
        credited = invoice.credit_notes.aggregate(total=Sum("total_minor"))["total"] or 0
        if total_minor >= 0 or invoice.total_minor + credited + total_minor < 0:
            raise InvoiceError("a credit note must be negative and within the invoice's total")
        note = Invoice.objects.create(
            account_id=invoice.account_id,
            kind=Invoice.Kind.CREDIT_NOTE,
            corrects=invoice,
            period_start=invoice.period_start,
            period_end=invoice.period_end,
            currency=invoice.currency,
            amount=sum((line.amount for line in credit_lines), from_minor(0, invoice.currency)),
            total_minor=total_minor,
            memo=memo,
        )
        InvoiceLine.objects.bulk_create(_line_row(note.pk, line) for line in credit_lines)
        _finalise(Invoice.objects.filter(pk=note.pk), now=now)
    note.refresh_from_db()
    return note


def _credit_lines(invoice: Invoice, lines: Sequence[InvoiceLine]) -> list[Line]:
    if not lines or any(line.invoice_id != invoice.pk for line in lines):
        raise InvoiceError("credit lines must be lines of the invoice corrected")
    return [
        Line(
            line.item,
            line.tier,
            line.model,
            line.price_book_id,
            -line.quantity,
            line.unit_price,
            -line.amount,
            line.usage_from,
            line.usage_to,
            -line.amount_minor,
        )
        for line in lines
    ]


def _credit_amount(invoice: Invoice, amount_minor: int) -> list[Line]:
    amount = from_minor(amount_minor, invoice.currency)
    first = invoice.lines.order_by("pk").first()
    tier = first.tier if first else ""
    return [
        Line(
            "credit",
            tier,
            "",
            None,
            1,
            amount,
            -amount,
            invoice.period_start,
            invoice.period_end,
            -amount_minor,
        )
    ]


def _drafts_compute(
    period: Period, *, until: datetime, account_id: int | None = None
) -> list[Draft]:
    """Every draft of the period from the ledger's [period.start, until), or one account's."""
    currency = billing_currency()
    prices = price_list(currency=currency)
    usage = _usage_sums(_INVOICE_USAGE, period.start, until, currency, account_id=account_id)
    plans = _account_plans(period, prices, account_id)
    used = {u.account_id for u in usage}
    allowances = [p for p in plans.values() if p.plan.included_tokens and p.account_id in used]
    covered = _usage_sums(
        _INVOICE_INCLUDED,
        period.start,
        until,
        currency,
        accounts=[p.account_id for p in allowances],
        tiers=[p.tier for p in allowances],
        allowances=[p.plan.included_tokens for p in allowances],
    )
    usage_of, covered_of = defaultdict(list), defaultdict(list)
    for row in usage:
        usage_of[row.account_id].append(row)
    for row in covered:
        covered_of[row.account_id].append(row)
    fees = {a for a, plan in plans.items() if plan.plan.monthly_fee}
    return [
        draft_build(
            account_id=account,
            period=period,
            currency=currency,
            prices=prices,
            usage=usage_of[account],
            covered=covered_of[account],
            plan=plans.get(account),
        )
        for account in sorted(used | fees)
    ]


def _usage_sums(
    sql: str, since: datetime, until: datetime, currency: str, **params: Any
) -> list[UsageSum]:
    with connection.cursor() as cursor:
        cursor.execute(sql, {"since": since, "until": until, "currency": currency, **params})
        return [
            UsageSum(row[0], row[1], row[2], row[3], Quantities(*(int(n) for n in row[4:])))
            for row in cursor.fetchall()
        ]


def _account_plans(
    period: Period, prices: PriceList, account_id: int | None
) -> dict[int, AccountPlan]:
    """Each account's plan: its tier's PlanPrice in the book in force at the period's start."""
    book = prices.book_at(period.start)
    if book is None or not book.plans:
        return {}
    accounts = Account.objects.filter(created_at__lt=period.end)
    if account_id is not None:
        accounts = accounts.filter(pk=account_id)
    plans = {}
    for account, tier in accounts.values_list("pk", "tier__slug"):
        plan = book.plans.get(tier)
        if plan is not None and (plan.monthly_fee or plan.included_tokens):
            plans[account] = AccountPlan(account, tier, book.id, plan)
    return plans


def _drafts_store(period: Period, drafts: Sequence[Draft]) -> None:
    """Replace the period's drafts with `drafts`, lines included (COPY: many accounts)."""
    stale = Invoice.objects.filter(
        kind=Invoice.Kind.INVOICE, status=Invoice.Status.DRAFT, period_start=period.start
    )
    InvoiceLine.objects.filter(invoice__in=stale).delete()
    stale.delete()
    invoices = Invoice.objects.bulk_create(
        Invoice(
            account_id=draft.account_id,
            kind=Invoice.Kind.INVOICE,
            status=Invoice.Status.DRAFT,
            period_start=period.start,
            period_end=period.end,
            currency=draft.currency,
            amount=draft.amount,
            total_minor=draft.total_minor,
        )
        for draft in drafts
    )
    copy_lines = f"COPY billing_invoiceline ({_LINE_COLUMNS}) FROM STDIN"
    with connection.cursor() as cursor, cursor.copy(copy_lines) as copy:
        for invoice, draft in zip(invoices, drafts, strict=True):
            for line in draft.lines:
                copy.write_row(_line_values(invoice.pk, line))


def _line_values(invoice_id: int, line: Line) -> tuple[Any, ...]:
    return (
        invoice_id,
        line.item,
        line.tier,
        line.model,
        line.price_book_id,
        line.quantity,
        line.unit_price,
        line.amount,
        line.amount_minor,
        line.usage_from,
        line.usage_to,
        "",
    )


def _line_row(invoice_id: int, line: Line) -> InvoiceLine:
    names = _LINE_COLUMNS.split(", ")
    return InvoiceLine(**dict(zip(names, _line_values(invoice_id, line), strict=True)))


def _finalise(drafts: QuerySet[Invoice], *, now: datetime) -> int:
    """Number `drafts` (by account) from the gap-free counter and finalise them, for good.

    The counter's row stays locked until the transaction ends, so numbers are taken in
    finalising order and a rolled-back transaction gives its numbers back: no gaps.
    """
    ids = list(drafts.order_by("account_id", "pk").values_list("pk", flat=True))
    if not ids:
        return 0
    prefix = f"TF-{now:%Y}-"
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_invoicenumber (prefix, last) VALUES (%s, 0) "
            "ON CONFLICT (prefix) DO NOTHING",
            [prefix],
        )
    counter = InvoiceNumber.objects.select_for_update().get(prefix=prefix)
    first = counter.last + 1
    counter.last += len(ids)
    counter.save(update_fields=["last"])
    numbers = [f"{prefix}{n:06d}" for n in range(first, first + len(ids))]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE billing_invoice i SET number = n.number, status = 'finalised', "
            "finalised_at = %s FROM unnest(%s::bigint[], %s::text[]) AS n(id, number) "
            "WHERE i.id = n.id",
            [now, ids, numbers],
        )
    return len(ids)
