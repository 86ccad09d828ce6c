"""Billing's jobs and writes: rollups, margins, invoices and credit notes (docs/billing.md).

Each job takes a PostgreSQL advisory lock for its scope and rebuilds whole buckets in one
transaction (DELETE the buckets, INSERT ... SELECT them again), so a second run, concurrent or
later, computes the same rows, and a worker killed mid-job leaves the previous state. JobRun
keeps each job's watermark: the next run starts a grace window before it, so usage that
arrives late (meter lag, energy attribution) still lands in its hour.
"""

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import MAXYEAR, UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Min, QuerySet, Sum
from django.utils import timezone

from billing.invoicing import AccountPlan, Draft, Line, Period, UsageSum, draft_build
from billing.models import (
    CostModel,
    Invoice,
    InvoiceLine,
    InvoiceNumber,
    JobRun,
    Margin,
    UsageRollup,
)
from billing.money import from_minor
from billing.rating import PriceList, Quantities
from billing.selectors import billing_currency, price_list
from customers.models import Account
from metering.models import EnergyInterval

log = logging.getLogger(__name__)

_SQL = Path(__file__).parent / "sql"
_ROLLUP_HOURS = (_SQL / "rollup_hours.sql").read_text()
_ROLLUP_DAYS = (_SQL / "rollup_days.sql").read_text()
_MARGINS = (_SQL / "margins.sql").read_text()
_INVOICE_USAGE = (_SQL / "invoice_usage.sql").read_text()
_INVOICE_INCLUDED = (_SQL / "invoice_included.sql").read_text()
_LINE_COLUMNS = (
    "invoice_id, item, tier, model, price_book_id, quantity, unit_price, amount, amount_minor, "
    "usage_from, usage_to, stripe_item_id"
)
_FIRST_USAGE = "SELECT min(started_at) FROM metering_usagerecord"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Window:
    """The buckets a job run rebuilt: [since, until)."""

    since: datetime
    until: datetime


def grace() -> timedelta:
    return timedelta(seconds=settings.BILLING.grace_seconds)


def rollups_run(*, now: datetime | None = None, wait: bool = False) -> Window | None:
    """Roll up the ledger's complete hours since the last run, a grace window back.

    Returns the hours rebuilt; None when another run holds the lock (unless `wait`) or there
    is nothing to roll up yet.
    """
    until = _hour(now or timezone.now())
    with transaction.atomic():
        if not _job_start("billing.rollups", wait=wait):
            return None
        watermark = _watermark("rollups")
        since = _hour(watermark - grace()) if watermark else _first_hour()
        if since is None or since >= until:
            return None
        _rollups_rebuild(since, until)
        _watermark_set("rollups", until)
    return Window(since, until)


def rollups_rebuild(*, since: datetime, until: datetime) -> Window:
    """Rebuild the rollups of the hours [since, until) whatever the watermark: usage that
    arrived after its grace window (a long outage's spool) is counted once this has run."""
    window = Window(_hour(since), _hour(until + HOUR - timedelta(microseconds=1)))
    with transaction.atomic():
        _job_start("billing.rollups", wait=True)
        _rollups_rebuild(window.since, window.until)
        # The margins of those hours are stale: the next margins run starts from them.
        JobRun.objects.filter(job="margins", watermark__gt=window.since).update(
            watermark=window.since
        )
    return window


def _rollups_rebuild(since: datetime, until: datetime) -> None:
    """Rebuild the hours [since, until) and their days; `until` may fall inside an hour."""
    days_since, days_until = _day(since), _day(until - timedelta(microseconds=1)) + DAY
    hours = UsageRollup.objects.filter(grain=UsageRollup.Grain.HOUR)
    hours.filter(bucket__gte=since, bucket__lt=until).delete()
    days = UsageRollup.objects.filter(grain=UsageRollup.Grain.DAY)
    days.filter(bucket__gte=days_since, bucket__lt=days_until).delete()
    with connection.cursor() as cursor:
        params: dict[str, Any] = {"since": since, "until": until, "currency": billing_currency()}
        cursor.execute(_ROLLUP_HOURS, params)
        cursor.execute(_ROLLUP_DAYS, {"since": days_since, "until": days_until})


def margins_run(*, now: datetime | None = None, wait: bool = False) -> Window | None:
    """Rebuild the margins of the months the rollups changed since the last run.

    Margins follow the rollups' watermark, not the clock: they never get ahead of the usage
    rolled up. Returns the months rebuilt, or None (locked, or no rollups yet).
    """
    with transaction.atomic():
        if not _job_start("billing.margins", wait=wait):
            return None
        rolled = _watermark("rollups")
        if rolled is None:
            return None
        watermark = _watermark("margins")
        start = watermark - grace() if watermark else _first_rollup()
        window = Window(_month(min(start, rolled - HOUR)), _next_month(rolled - HOUR))
        _margins_rebuild(window)
        _watermark_set("margins", rolled)
    return window


def _margins_rebuild(window: Window) -> None:
    """Rebuild the day and month margins of the whole months [since, until)."""
    Margin.objects.filter(
        grain__in=[Margin.Grain.DAY, Margin.Grain.MONTH],
        bucket__gte=window.since,
        bucket__lt=window.until,
    ).delete()
    with connection.cursor() as cursor:
        params: dict[str, Any] = {
            "since": window.since,
            "until": window.until,
            "currency": billing_currency(),
        }
        cursor.execute(_MARGINS, params)


def figures_refresh(*, now: datetime | None = None) -> Window:
    """Rollups and margins up to `now`, the hour in progress included: the figures at once.

    The beat's jobs roll up whole hours only, minutes apart, so usage shows in the margins an
    hour later at the latest; this is for someone who wants to see it now (`manage.py
    refresh_figures`, which `tf demo` runs). The hour in progress is rolled up to `now`, its
    GPU time too, outside the watermark: budgets and the jobs read rollups only up to the
    watermark, and the next rollup run after the hour ends rebuilds it whole (it is within
    the grace window). Returns `now`'s month up to `now`.
    """
    now = now or timezone.now()
    rollups_run(now=now, wait=True)
    margins_run(now=now, wait=True)
    month = month_of(now)
    with transaction.atomic():
        _job_start("billing.rollups", wait=True)
        _rollups_rebuild(_hour(now), now)
    with transaction.atomic():
        _job_start("billing.margins", wait=True)
        _margins_rebuild(Window(month.start, month.end))
    return Window(month.start, now)


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
    return Period(_month(at), _next_month(at))


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
        _job_start(f"billing.invoices:{period.start:%Y-%m}", wait=True)
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
        closed_until = _watermark("invoices")
        if closed_until is None or closed_until < period.end:
            _watermark_set("invoices", period.end)
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
    due = month_of(_month(now - grace()) - DAY)
    closed_until = _watermark("invoices")
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


def _job_start(name: str, *, wait: bool) -> bool:
    """Take the job's advisory lock, held until the transaction ends (so a dead worker's is
    freed); False when another holds it and we do not `wait`.

    A job's statements read up to a month of the ledger at once: they get the memory to sort
    and hash it without spilling to disk, and no JIT (compiling them took seconds, saving none).
    """
    with connection.cursor() as cursor:
        function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
        cursor.execute(f"SELECT {function}(hashtext(%s))::text", [name])
        row = cursor.fetchone()
        if not wait and row[0] != "true":
            return False
        cursor.execute("SET LOCAL jit = off")
        cursor.execute("SET LOCAL work_mem = '256MB'")
    return True


def _watermark(job: str) -> datetime | None:
    run = JobRun.objects.filter(job=job, scope="").first()
    return run.watermark if run else None


def _watermark_set(job: str, watermark: datetime) -> None:
    JobRun.objects.update_or_create(job=job, scope="", defaults={"watermark": watermark})


def _first_hour() -> datetime | None:
    """Where rollups begin: the first usage, energy interval or cost model, whichever first."""
    with connection.cursor() as cursor:
        cursor.execute(_FIRST_USAGE)
        starts = [cursor.fetchone()[0]]
    starts.append(EnergyInterval.objects.aggregate(first=Min("started_at"))["first"])
    starts.append(CostModel.objects.aggregate(first=Min("effective_from"))["first"])
    known = [start for start in starts if start is not None]
    return _hour(min(known)) if known else None


def _first_rollup() -> datetime:
    first = UsageRollup.objects.aggregate(first=Min("bucket"))["first"]
    return first or datetime.max.replace(tzinfo=UTC)


def _hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _day(at: datetime) -> datetime:
    return _hour(at).replace(hour=0)


def _month(at: datetime) -> datetime:
    return _day(at).replace(day=1)


def _next_month(at: datetime) -> datetime:
    return _month(_month(at) + timedelta(days=32))
