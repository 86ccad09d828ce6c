"""Billing's invoices: closing a month, the invoice in progress, and credit notes
(docs/billing.md, "Invoices").

Months close in order, each once: the close takes the invoices' advisory lock
(billing/jobs.py), fixes a cutoff of the ledger's arrivals, and computes every account's draft
from the ledger (billing/invoicing.py builds each): the month's usage that arrived by the
cutoff, and earlier months' usage that arrived since the previous close (prior-period lines).
It stores, numbers and finalises the drafts in one transaction: a second run finalises
nothing, and a worker killed mid-close leaves no draft and no number taken.
billing/closing.py runs these with an audit entry of their own.
"""

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import MAXYEAR, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.db.models import Min, QuerySet, Sum
from django.utils import timezone

from audit.models import AuditEntry
from audit.services import object_type
from billing.drawdown import LOCK as CREDITS_LOCK
from billing.drawdown import credits_drawdown_run
from billing.invoicing import (
    AccountPlan,
    Draft,
    Line,
    Period,
    UsageSum,
    draft_build,
    open_time,
)
from billing.jobs import (
    DAY,
    HOUR,
    LONG_AGO,
    grace,
    hour_start,
    job_start,
    month_close,
    month_close_set,
    month_closed_last,
    month_start,
    next_month,
    watermark,
)
from billing.models import CreditEntry, Invoice, InvoiceLine, InvoiceNumber, JobRun
from billing.money import from_minor, minor_text
from billing.rating import FEE_EXEMPT, PriceList, Quantities
from billing.rollups import (
    ROLLUPS_LOCK,
    rollups_arrived,
    rollups_catch_up,
    # Re-exported for tests/billing/test_jobs_crash.py, whose worker process (a string it
    # runs) reaches the jobs as attributes of this module.
    rollups_run,  # noqa: F401
)
from billing.selectors import billing_currency, price_list
from customers.models import Account, WebhookEndpoint
from customers.webhooks import webhook_emit
from metering.services import arrivals_cutoff, attributions_cutoff

log = logging.getLogger(__name__)

_SQL = Path(__file__).parent / "sql"
_INVOICE_USAGE = (_SQL / "invoice_usage.sql").read_text()
_INVOICE_INCLUDED = (_SQL / "invoice_included.sql").read_text()
_INVOICE_USAGE_ROLLUPS = (_SQL / "invoice_usage_rollups.sql").read_text()
_INCLUDED_HOURS = (_SQL / "invoice_included_hours.sql").read_text()
_INCLUDED_WHOLE = (_SQL / "invoice_included_whole.sql").read_text()
_LINE_COLUMNS = (
    "invoice_id, item, tier, model, price_book_id, quantity, unit_price, amount, amount_minor, "
    "usage_from, usage_to, stripe_item_id, project_id"
)
_ANALYZE_AFTER_INVOICES = 1000
_LINE_TYPES = [
    "int8", "text", "text", "text", "int8", "int8", "numeric", "numeric", "int8",
    "timestamptz", "timestamptz", "text", "int8",
]  # fmt: skip


class InvoiceError(Exception):
    """A request billing refuses: an open period, an edit of a finalised invoice, ...

    Its text is shown to the person who asked, as it is: it says what to do instead.
    """


class CreditTooLarge(InvoiceError):
    """A credit note for more than is left to credit on its invoice (`left_minor`)."""

    def __init__(self, message: str, *, left_minor: int) -> None:
        super().__init__(message)
        self.left_minor = left_minor


@dataclass(frozen=True, slots=True)
class LateUsage:
    """Usage of a closed month that reached the ledger after the month's close."""

    account_id: int
    month: datetime
    tier: str
    model: str
    tokens: int


@dataclass(frozen=True, slots=True)
class CloseResult:
    period: Period
    # Invoices finalised by this run (0 when the month was closed before).
    finalised: int
    # Usage worth nothing for want of a price: (account_id, tier, model, tokens).
    unpriced: list[tuple[int, str, str, int]] = field(default_factory=list)
    # Accounts with usage in the ledger but no longer in customers_account: not invoiced.
    unknown_accounts: list[int] = field(default_factory=list)
    # Late usage of earlier months billed by this close as prior-period lines.
    late: list[LateUsage] = field(default_factory=list)
    # When the month was closed before: late usage that arrived since the last close, which
    # the next close will bill.
    late_pending: list[LateUsage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DueCloses:
    """What invoices_close_due did: each due month closed, in order, and the first it could
    not close (the months after it wait for it)."""

    closed: list[CloseResult] = field(default_factory=list)
    failed: Period | None = None
    error: str = ""


def month_of(at: datetime) -> Period:
    """The calendar month (UTC) holding `at`: invoices' period."""
    if (at.year, at.month) == (MAXYEAR, 12):
        raise InvoiceError(f"{MAXYEAR}-12 ends past the last date there is")
    return Period(month_start(at), next_month(at))


def invoices_close(*, period_start: datetime, now: datetime | None = None) -> CloseResult:
    """Invoice every account with usage or a plan fee in the month of `period_start`.

    Once the grace window after the month has passed and the month before it is closed (or
    none is): fix a cutoff of the ledger's arrivals, then in one transaction compute each
    account's draft, its month's usage that arrived by the cutoff and its late usage of
    earlier months (arrived since the previous close), store it, number it from the gap-free
    counter and finalise it. A month closes once: a second run finalises nothing and reports
    the late usage waiting for the next close. A run killed before its commit leaves no draft
    and no number taken.
    """
    now = now or timezone.now()
    period = month_of(period_start)
    if now < period.end + grace():
        raise InvoiceError(
            f"{period.start:%Y-%m} is open until {period.end + grace():%Y-%m-%d %H:%M} UTC "
            "(its grace window for late usage): close it after that."
        )
    if Account.objects.filter(billing_mode=Account.Billing.PREPAID).exists():
        credits_drawdown_run(wait=True)  # the month's hours drawn as far as they are rolled up
    arrived_by, attributed_by = arrivals_cutoff(), attributions_cutoff()
    with transaction.atomic():
        job_start("billing.invoices", wait=True)
        if month_close(period.start) is not None:
            return CloseResult(period, 0, late_pending=_late_pending())
        # The month's own usage is read from the rollups, brought to the close's cutoff first
        # (or the later one of a run that took the lock before us) and held until the commit.
        job_start(ROLLUPS_LOCK, wait=True)
        rollups_catch_up(until=hour_start(now), arrived_by=arrived_by, attributed_by=attributed_by)
        cutoff = rollups_arrived() or arrived_by
        previous = month_start(period.start - DAY)
        late_since = month_close(previous)
        if late_since is None and JobRun.objects.filter(job="invoices").exists():
            raise InvoiceError(
                f"{previous:%Y-%m} is not closed: months close in order, close it first"
            )
        credits = _credits_cut(period)
        drafts = _drafts_compute(
            period,
            until=period.end,
            arrived_by=cutoff,
            late_since=late_since,
            credits=credits,
            rolled_up=True,
        )
        invoices = Invoice.objects.filter(kind=Invoice.Kind.INVOICE, period_start=period.start)
        closed = set(
            invoices.filter(status=Invoice.Status.FINALISED).values_list("account_id", flat=True)
        )
        known = set(
            Account.objects.filter(pk__in=[d.account_id for d in drafts]).values_list(
                "pk", flat=True
            )
        )
        open_accounts = known - closed
        billable = [d for d in drafts if d.lines and d.account_id in open_accounts]
        _drafts_store(period, billable)
        finalised = _finalise(invoices.filter(status=Invoice.Status.DRAFT), now=now)
        month_close_set(period.start, cutoff)
        if finalised >= _ANALYZE_AFTER_INVOICES:  # for the finance report's plans
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE billing_invoice, billing_invoiceline")
    return _close_reported(period, finalised, drafts, known)


def _close_reported(
    period: Period, finalised: int, drafts: Sequence[Draft], known: set[int]
) -> CloseResult:
    unpriced = [(d.account_id, *item) for d in drafts for item in d.unpriced]
    for account_id, tier, model, tokens in unpriced:
        log.warning(
            "usage without a price",
            extra={"account_id": account_id, "tier": tier, "model": model, "tokens": tokens},
        )
    unknown = [d.account_id for d in drafts if d.account_id not in known]
    for account_id in unknown:
        log.warning("usage of an unknown account", extra={"account_id": account_id})
    late = [
        LateUsage(d.account_id, *item) for d in drafts if d.account_id in known for item in d.late
    ]
    _late_logged("late usage billed on the next invoice", late, period=f"{period.start:%Y-%m}")
    return CloseResult(period, finalised, unpriced, unknown, late)


def _late_logged(message: str, late: Sequence[LateUsage], **extra: str) -> None:
    for usage in late:
        log.warning(
            message,
            extra={
                "account_id": usage.account_id,
                "usage_month": f"{usage.month:%Y-%m}",
                "tier": usage.tier,
                "model": usage.model,
                "tokens": usage.tokens,
                **extra,
            },
        )


def _late_pending() -> list[LateUsage]:
    """Usage of closed months that arrived after the last close: the next close bills it."""
    last = month_closed_last()
    if last is None:
        return []
    after, cutoff = next_month(last[0]), last[1]
    pending = _usage_sums(
        _INVOICE_USAGE,
        since=LONG_AGO,
        until=after,
        month=None,
        stored_after=cutoff,
        arrived_by=None,
        currency=billing_currency(),
        account_id=None,
    )
    late = [LateUsage(u.account_id, u.month, u.tier, u.model, u.quantities.tokens) for u in pending]
    _late_logged("late usage waiting for the next close", late)
    return late


def invoices_close_due(*, now: datetime | None = None) -> DueCloses:
    """Close every month whose grace window has passed, in order, from the one after the last
    closed (or the first with usage or an account); stop at the first that fails, log it and
    report it: the months after it wait for it."""
    now = now or timezone.now()
    last_due = month_of(month_start(now - grace()) - DAY)
    result = DueCloses()
    month = _first_open_month()
    while month is not None and month <= last_due.start:
        try:
            result.closed.append(invoices_close(period_start=month, now=now))
        except Exception as error:
            log.exception("a month could not be closed", extra={"period": f"{month:%Y-%m}"})
            return DueCloses(result.closed, month_of(month), str(error) or type(error).__name__)
        month = next_month(month)
    return result


def _first_open_month() -> datetime | None:
    """The month after the last closed one; before the first close, the first month with
    usage or an account."""
    last = month_closed_last()
    if last is not None:
        return next_month(last[0])
    closed_until = watermark("invoices")  # closed before months had cutoffs
    if closed_until is not None:
        return month_start(closed_until)
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(started_at) FROM metering_usagerecord")
        first_usage = cursor.fetchone()[0]
    first_account = Account.objects.aggregate(first=Min("created_at"))["first"]
    starts = [at for at in (first_usage, first_account) if at is not None]
    return month_start(min(starts)) if starts else None


def invoice_preview(*, account: Account, now: datetime | None = None) -> Draft:
    """The current month's invoice of `account` as it stands at `now`: its usage so far and
    the late usage of closed months the close will add; nothing is stored."""
    now = now or timezone.now()
    period = month_of(now)
    late_since = month_close(month_start(period.start - DAY))
    drafts = _drafts_compute(
        period, until=now, arrived_by=None, late_since=late_since, account_id=account.pk
    )
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

    Either whole `lines` of the invoice, whose charged minor units are reversed exactly, each
    at most once, or an `amount_minor` credited as one line. `amount_minor` is what is
    credited, so it is positive (the note's total is its negation), as people type it. The
    credits of an invoice never exceed its total (`invoice_credit_left`); what is refused
    raises InvoiceError (CreditTooLarge where it is too much) with a message that says what
    to enter instead. Notes of one invoice are issued one at a time (its row is locked), so
    two issued at once cannot both reverse a line.
    """
    if (lines is None) == (amount_minor is None):
        raise InvoiceError("Credit either whole lines or an amount: one of the two.")
    if amount_minor is not None and amount_minor <= 0:
        raise InvoiceError(
            "Enter the amount to credit as a positive number: the credit note subtracts it "
            "from the invoice."
        )
    now = now or timezone.now()
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        _creditable(invoice)
        credit_lines = (
            _credit_amount(invoice, amount_minor)
            if amount_minor is not None
            else _credit_lines(invoice, _uncredited(invoice, lines or []))
        )
        total_minor = sum(line.amount_minor for line in credit_lines)
        _within_total(invoice, -total_minor, by_lines=amount_minor is None)
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


def invoice_credit_left(*, invoice: Invoice) -> int:
    """What may still be credited on `invoice`, in minor units: its total less its credit
    notes (whose totals are negative)."""
    credited = invoice.credit_notes.aggregate(total=Sum("total_minor"))["total"] or 0
    return max(invoice.total_minor + credited, 0)


def _creditable(invoice: Invoice) -> None:
    if invoice.kind == Invoice.Kind.CREDIT_NOTE:
        raise InvoiceError(
            f"{invoice} is a credit note: credit the invoice it corrects ({invoice.corrects})."
        )
    if invoice.status != Invoice.Status.FINALISED:
        raise InvoiceError(
            f"{invoice} is a draft: only a finalised invoice can be credited; a draft changes "
            "until its month is closed."
        )


def _within_total(invoice: Invoice, credit_minor: int, *, by_lines: bool) -> None:
    """Refuse a credit of nothing, or of more than is left to credit on `invoice`."""
    currency = invoice.currency
    left = invoice_credit_left(invoice=invoice)
    total, left_text = minor_text(invoice.total_minor, currency), minor_text(left, currency)
    if credit_minor <= 0:
        raise InvoiceError(
            f"The lines chosen charged {minor_text(credit_minor, currency)} in all, so there "
            "is nothing to credit: choose lines that charged something (an included-tokens "
            "line is a discount, not a charge)."
        )
    if left == 0:
        raise CreditTooLarge(
            f"Nothing is left to credit on {invoice}: its credit notes already come to its "
            f"total, {total}.",
            left_minor=0,
        )
    if credit_minor > left:
        asked = minor_text(credit_minor, currency)
        raise CreditTooLarge(
            f"The lines chosen come to {asked}, more than the {left_text} left to credit "
            f"within the invoice's total of {total}: choose fewer lines, or credit an amount."
            if by_lines
            else f"{asked} is more than is left to credit: enter at most {left_text}, what is "
            f"left within the invoice's total of {total}.",
            left_minor=left,
        )


def _uncredited(invoice: Invoice, lines: Sequence[InvoiceLine]) -> list[InvoiceLine]:
    """`lines` as stored, each refused if a credit note of the invoice reversed it already.

    A credit note's line reverses the invoice's line with the same item, tier, model, book,
    usage span and project (an invoice has one line of each); the caller holds the invoice's row
    lock, so two notes issued at once see each other.
    """
    if not lines:
        raise InvoiceError(f"Choose the lines of {invoice} to credit.")
    stored = list(invoice.lines.filter(pk__in={line.pk for line in lines}).order_by("pk"))
    if any(line.invoice_id != invoice.pk for line in lines) or len(stored) != len(
        {line.pk for line in lines}
    ):
        raise InvoiceError(f"Choose lines of {invoice}: some of those chosen are not its lines.")
    reversed_ = set(
        InvoiceLine.objects.filter(
            invoice__corrects=invoice, invoice__status=Invoice.Status.FINALISED
        ).values_list(*_LINE_KEY)
    )
    for line in stored:
        if tuple(getattr(line, field) for field in _LINE_KEY) in reversed_:
            raise InvoiceError(
                f"The {line.item} line of {line.tier}/{line.model or '-'} was credited already: "
                "leave it out."
            )
    return stored


_LINE_KEY = ("item", "tier", "model", "price_book_id", "usage_from", "usage_to", "project_id")


def _credit_lines(invoice: Invoice, lines: Sequence[InvoiceLine]) -> list[Line]:
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
            line.project_id,
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


@dataclass(frozen=True, slots=True)
class CreditsCut:
    """Which usage draw-downs an invoice applies: those recorded by `by` (None: all so far)
    and not applied by the previous month's invoice (recorded by `after`, for hours before
    the period)."""

    by: datetime | None
    after: datetime | None


def _credits_cut(period: Period) -> CreditsCut:
    """Fix the close's cutoff of the credit draw-downs and record it for the month.

    Draw-downs are written only under the credits' lock (billing/drawdown.py); taking it here,
    until the close commits, means every draw-down written later is stamped later, so it goes
    on the next invoice and none falls between two."""
    job_start(CREDITS_LOCK, wait=True)
    by = timezone.now()
    previous = JobRun.objects.filter(
        job="invoices.credits", scope=f"{month_start(period.start - DAY):%Y-%m}"
    ).first()
    JobRun.objects.update_or_create(
        job="invoices.credits", scope=f"{period.start:%Y-%m}", defaults={"watermark": by}
    )
    return CreditsCut(by, previous.watermark if previous else None)


def _credits_applied(
    period: Period, until: datetime, cut: CreditsCut, account_id: int | None
) -> dict[int, Decimal]:
    """Each account's grants drawn down by usage of hours before `until` within `cut`."""
    drawn = CreditEntry.objects.filter(
        kind=CreditEntry.Kind.USAGE, grant__isnull=False, period__lt=until
    )
    if cut.by is not None:
        drawn = drawn.filter(created_at__lte=cut.by)
    if cut.after is not None:
        drawn = drawn.exclude(period__lt=period.start, created_at__lte=cut.after)
    if account_id is not None:
        drawn = drawn.filter(account_id=account_id)
    totals = drawn.values("account_id").annotate(total=Sum("amount")).order_by()
    return {row["account_id"]: -row["total"] for row in totals if row["total"]}


def _drafts_compute(
    period: Period,
    *,
    until: datetime,
    arrived_by: datetime | None,
    late_since: datetime | None,
    account_id: int | None = None,
    credits: CreditsCut = CreditsCut(None, None),
    rolled_up: bool = False,
) -> list[Draft]:
    """Every draft of the period, or one account's: the usage that started in
    [period.start, until) and reached the ledger by `arrived_by` (None: all of it), and, when
    `late_since` is set, earlier months' usage that reached it in (late_since, arrived_by];
    less the prepaid credit its usage drew down (`credits`).

    `rolled_up`: the period's own usage is read from the rollups, which hold exactly the
    records stored by `arrived_by` (the close ran them to it), and of the ledger only the
    records of the hour each plan's included tokens run out in; the same drafts, to the minor
    unit, as from the ledger alone (tests/billing/test_close_rollups.py)."""
    currency = billing_currency()
    applied = _credits_applied(period, until, credits, account_id)
    prices = price_list(currency=currency)
    if rolled_up:
        usage = _usage_sums(
            _INVOICE_USAGE_ROLLUPS, since=period.start, until=until, month=period.start
        )
    else:
        usage = _usage_sums(
            _INVOICE_USAGE,
            since=period.start,
            until=until,
            month=period.start,
            stored_after=None,
            arrived_by=arrived_by,
            currency=currency,
            account_id=account_id,
        )
    if late_since is not None:
        usage += _usage_sums(
            _INVOICE_USAGE,
            since=LONG_AGO,
            until=period.start,
            month=None,
            stored_after=late_since,
            arrived_by=arrived_by,
            currency=currency,
            account_id=account_id,
        )
    plans = _account_plans(period, prices, account_id)
    used = {u.account_id for u in usage}
    by_month: dict[datetime, list[tuple[int, str, int]]] = defaultdict(list)
    for account, month, tier, allowance in _allowances(period, prices, plans, usage):
        by_month[month].append((account, tier, allowance))
    covered = []
    for month, allowances in sorted(by_month.items()):
        own = month == period.start
        if own and rolled_up:
            covered += _included_rolled_up(month, until, arrived_by, currency, allowances)
            continue
        end = until if own else next_month(month)
        covered += _usage_sums(
            _INVOICE_INCLUDED,
            since=month,
            until=end,
            month=month,
            stored_after=None if own else late_since,
            arrived_by=arrived_by,
            currency=currency,
            accounts=[a[0] for a in allowances],
            tiers=[a[1] for a in allowances],
            allowances=[a[2] for a in allowances],
            starts=[month] * len(allowances),
            ends=[end] * len(allowances),
        )
    usage_of, covered_of = defaultdict(list), defaultdict(list)
    for row in usage:
        usage_of[row.account_id].append(row)
    for row in _merged(covered):
        covered_of[row.account_id].append(row)
    fees = {a for a, plan in plans.items() if plan.plan.monthly_fee and plan.open.microseconds}
    return [
        draft_build(
            account_id=account,
            period=period,
            currency=currency,
            prices=prices,
            usage=usage_of[account],
            covered=covered_of[account],
            plan=plans.get(account),
            credits_applied=applied.get(account, Decimal(0)),
        )
        for account in sorted(used | fees | set(applied))
    ]


def _included_rolled_up(
    month: datetime,
    until: datetime,
    arrived_by: datetime | None,
    currency: str,
    allowances: Sequence[tuple[int, str, int]],
) -> list[UsageSum]:
    """The usage of the month's own allowances, from the rollups: the hours each covers
    whole, then, record by record, the hour it runs out in."""
    accounts, tiers = [a[0] for a in allowances], [a[1] for a in allowances]
    with connection.cursor() as cursor:
        cursor.execute(
            _INCLUDED_HOURS,
            {
                "since": month,
                "until": until,
                "accounts": accounts,
                "tiers": tiers,
                "allowances": [a[2] for a in allowances],
            },
        )
        spent = {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    covered = _usage_sums(
        _INCLUDED_WHOLE,
        since=month,
        month=month,
        accounts=accounts,
        tiers=tiers,
        whole_until=[spent[a][0] for a in accounts],
    )
    running_out = [(a, t) for a, t in zip(accounts, tiers, strict=True) if spent[a][1]]
    if running_out:
        hours = [spent[a][0] for a, _ in running_out]
        covered += _usage_sums(
            _INVOICE_INCLUDED,
            since=min(hours),
            until=max(hours) + HOUR,
            month=month,
            stored_after=None,
            arrived_by=arrived_by,
            currency=currency,
            accounts=[a for a, _ in running_out],
            tiers=[t for _, t in running_out],
            allowances=[spent[a][1] for a, _ in running_out],
            starts=hours,
            ends=[hour + HOUR for hour in hours],
        )
    return covered


def _merged(sums: Iterable[UsageSum]) -> list[UsageSum]:
    """One sum per account, month, tier, model, book and project (one invoice line each)."""
    merged: dict[tuple[Any, ...], UsageSum] = {}
    for row in sums:
        key = (row.account_id, row.month, row.tier, row.model, row.book_id, row.project_id)
        kept = merged.get(key)
        merged[key] = (
            row if kept is None else replace(kept, quantities=kept.quantities + row.quantities)
        )
    return [merged[key] for key in sorted(merged, key=_sort_key)]


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((value is None, value) for value in key)


def _allowances(
    period: Period, prices: PriceList, plans: dict[int, AccountPlan], usage: Sequence[UsageSum]
) -> list[tuple[int, datetime, str, int]]:
    """(account, month, tier, included tokens left) for each month of `usage` with a plan:
    the period's whole allowance; for an earlier month (late usage), its plan's allowance
    less what the month's invoices already covered."""
    allowances = []
    months = sorted({(u.account_id, u.month) for u in usage})
    late = [(account, month) for account, month in months if month < period.start]
    covered = _included_already(late)
    tiers = dict(
        Account.objects.filter(pk__in={a for a, _ in late}).values_list("pk", "tier__slug")
    )
    for account, month in months:
        if month >= period.start:
            plan = plans.get(account)
            if plan is not None and plan.plan.included_tokens:
                allowances.append((account, month, plan.tier, plan.plan.included_tokens))
            continue
        book = prices.book_at(month)
        tier = tiers.get(account)
        month_plan = book.plans.get(tier) if book is not None and tier is not None else None
        if tier is not None and month_plan is not None and month_plan.included_tokens:
            left = month_plan.included_tokens - covered.get((account, month), 0)
            if left > 0:
                allowances.append((account, month, tier, left))
    return allowances


def _included_already(months: Sequence[tuple[int, datetime]]) -> dict[tuple[int, datetime], int]:
    """Included tokens the invoices already applied to each (account, usage month)."""
    if not months:
        return {}
    lines = InvoiceLine.objects.filter(
        item=InvoiceLine.Item.INCLUDED,
        invoice__kind=Invoice.Kind.INVOICE,
        invoice__status=Invoice.Status.FINALISED,
        invoice__account_id__in={a for a, _ in months},
        usage_from__gte=min(m for _, m in months),
    ).values_list("invoice__account_id", "usage_from", "quantity")
    covered: dict[tuple[int, datetime], int] = defaultdict(int)
    for account, usage_from, quantity in lines:
        covered[(account, month_start(usage_from))] += quantity
    return covered


def _usage_sums(sql: str, **params: Any) -> list[UsageSum]:
    with connection.cursor() as cursor:
        cursor.execute(sql, {"fee_exempt": FEE_EXEMPT, **params})
        return [
            UsageSum(
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                Quantities(*(int(n) for n in row[6:])),
                project_id=row[5],
            )
            for row in cursor.fetchall()
        ]


def _account_plans(
    period: Period, prices: PriceList, account_id: int | None
) -> dict[int, AccountPlan]:
    """Each account's plan: its tier's PlanPrice in the book in force at the period's start,
    and the time of the period it was open (the fee is prorated over it, to the
    microsecond: from its creation, less the time it was suspended; docs/billing.md)."""
    book = prices.book_at(period.start)
    if book is None or not book.plans:
        return {}
    accounts = Account.objects.filter(created_at__lt=period.end)
    if account_id is not None:
        accounts = accounts.filter(pk=account_id)
    rows = list(accounts.values_list("pk", "tier__slug", "created_at", "status"))
    changes = _status_changes([pk for pk, *_ in rows], until=period.end)
    plans = {}
    for account, tier, created_at, status in rows:
        plan = book.plans.get(tier)
        if plan is not None and (plan.monthly_fee or plan.included_tokens):
            suspended_now = status == Account.Status.SUSPENDED
            opened = open_time(period, created_at, changes.get(account, []), suspended_now)
            plans[account] = AccountPlan(account, tier, book.id, plan, opened)
    return plans


def _status_changes(
    accounts: list[int], *, until: datetime
) -> dict[int, list[tuple[datetime, bool]]]:
    """Each account's suspensions and reactivations before `until`, from the audit log:
    (when, suspended after it), in order."""
    entries = AuditEntry.objects.filter(
        object_type=object_type(Account),
        object_id__in=[str(pk) for pk in accounts],
        action__in=("suspend", "activate"),
        at__lt=until,
    ).order_by("at", "id")
    changes: dict[int, list[tuple[datetime, bool]]] = defaultdict(list)
    for object_id, action, at in entries.values_list("object_id", "action", "at"):
        changes[int(object_id)].append((at, action == "suspend"))
    return changes


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
        copy.set_types(_LINE_TYPES)  # not looked up per value: a close writes 250k lines
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
        line.project_id,
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
    _finalised_emit(ids)
    return len(ids)


def _finalised_emit(ids: list[int]) -> None:
    """`invoice.finalized` to the endpoints of the accounts that have any, in the
    finalising transaction (accounts without one get no event: a close may finalise
    thousands)."""
    invoices = Invoice.objects.filter(pk__in=ids)
    listening = set(
        WebhookEndpoint.objects.filter(
            enabled=True, account_id__in=invoices.values("account_id")
        ).values_list("account_id", flat=True)
    )
    for invoice in invoices.filter(account_id__in=listening).order_by("pk"):
        webhook_emit(
            account_id=invoice.account_id,
            event="invoice.finalized",
            data={
                "number": invoice.number,
                "kind": invoice.kind,
                "period_start": invoice.period_start.isoformat(),
                "period_end": invoice.period_end.isoformat(),
                "currency": invoice.currency,
                "total_minor": invoice.total_minor,
            },
        )
