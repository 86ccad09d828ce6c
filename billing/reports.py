"""The finance report for a month: what usage earned and cost, and what was invoiced, tied
together to the cent (docs/billing.md, "Finance report").

Usage: revenue at list price, cost (energy, GPU), margin and margin %, cost per 1M tokens and
tokens per kWh, by tier, model, backend, account, project and day, from the margins the margin job
stored (billing_margin). Ratios divide only what was measured and show that coverage beside
them; usage without a price is shown as unpriced, never as revenue of zero; usage of account
ids that do not exist is never revenue (the close does not invoice it): it is shown apart.

Invoices: the month's finalised invoices and credit notes (the register), what they billed
split into usage, included tokens, plan fees and prior-period lines, paid and outstanding
with the ageing of what is owed, the usage not (yet) invoiced, and the reconciliation from
list-price revenue to invoiced revenue (the sum of the invoices' total_minor) and net billed.

Figures are summed and divided in PostgreSQL (billing/sql/report_*.sql) and kept unrounded
here; billing.report_forms writes them as CSV, HTML and PDF.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import MAXYEAR, UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from django.utils import timezone

from billing.jobs import LONG_AGO, month_close, month_closed_last, watermark
from billing.models import Invoice, Margin
from billing.money import from_minor, to_minor
from billing.rating import FEE_EXEMPT
from billing.rollups import rollups_arrived
from billing.selectors import Unpriced, billing_currency, usage_unpriced
from config.db_routing import reading, replica_lag, replica_reads
from fleet.models import Backend

ReportFormat = Literal["html", "csv", "pdf"]
REPORT_FORMATS: tuple[ReportFormat, ...] = ("html", "csv", "pdf")
CONTENT_TYPES: dict[ReportFormat, str] = {
    "html": "text/html; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "pdf": "application/pdf",
}
DIMENSIONS = ("tier", "model", "backend", "account", "project")
# The key under which every dimension holds the cost of backend hours without requests.
UNALLOCATED = "(unallocated)"
# The project key of usage without a project (records of keys deleted before projects).
NO_PROJECT = "(none)"
# Keys per dimension shown in the HTML and PDF forms (the rest in one row); the CSV has all.
TOP = 15
# Margin % is shown only where revenue is at least this share of the cost it is set against:
# below it (a margin under -900 %) the percentage says only that revenue is negligible, so
# the tables say n/a and the absolute margin beside it says how much.
MARGIN_PCT_MIN_REVENUE_SHARE = Decimal("0.1")
# Amounts of money in the HTML and PDF forms keep at least this many significant digits (an
# energy cost of 0.0026 is not 0.00), never fewer places than the currency's minor unit.
SIGNIFICANT_DIGITS = 4
# Outstanding invoices by days since finalised: (first day, last day or None, label).
AGEING = ((0, 30, "0-30 days"), (31, 60, "31-60 days"), (61, 90, "61-90 days"))
AGEING_LAST = "over 90 days"

_SQL = Path(__file__).parent / "sql"
_MARGINS = (_SQL / "report_margins.sql").read_text()
_USAGE = (_SQL / "report_usage.sql").read_text()
_INVOICES = (_SQL / "report_invoices.sql").read_text()
_INVOICE_LINES = (_SQL / "report_invoice_lines.sql").read_text()


class ReportError(ValueError):
    """A report that cannot be made: a currency the month has nothing in."""


@dataclass(frozen=True, slots=True)
class Line:
    """One key's figures (a tier, a model, ... or a day), or the rest of the keys (key None),
    or the backends' hours without requests (key UNALLOCATED), or the period's total."""

    dimension: str
    key: str | None
    # An account's name; a project's account and name ("Acme / search").
    account_name: str | None
    keys: int
    tokens: int
    energy_kwh: Decimal
    # At list price, of known accounts (usage of unknown accounts is unknown_revenue).
    revenue: Decimal
    energy_cost: Decimal
    gpu_cost: Decimal
    requests: int
    # Coverage: requests whose energy is known, tokens with measured energy, tokens of
    # backends with a cost model; usage without a price.
    measured_requests: int
    measured_tokens: int
    costed_tokens: int
    costed_measured_tokens: int
    unpriced_requests: int
    unpriced_tokens: int
    # Of the priced usage; null without revenue.
    margin_pct: Decimal | None
    # Over measured (and costed) tokens only; null where nothing was measured.
    energy_cost_per_million_tokens: Decimal | None
    gpu_cost_per_million_tokens: Decimal | None
    tokens_per_kwh: Decimal | None
    joules_per_token: Decimal | None
    measured_token_share: Decimal | None
    measured_request_share: Decimal | None
    costed_token_share: Decimal | None
    unpriced_cost: Decimal = Decimal(0)
    # List price of the usage of account ids not in customers_account: never invoiced.
    unknown_revenue: Decimal = Decimal(0)
    # Accounts and the total: the month's invoices and credit notes (negative), minor units.
    invoiced_minor: int | None = None
    credited_minor: int | None = None
    unknown_account: bool = False

    @property
    def cost(self) -> Decimal:
        return self.energy_cost + self.gpu_cost

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost

    @property
    def margin_pct_shown(self) -> Decimal | None:
        """Margin % where it means something: revenue at least a tenth of the priced cost."""
        priced_cost = self.cost - self.unpriced_cost
        if self.margin_pct is None or self.revenue < priced_cost * MARGIN_PCT_MIN_REVENUE_SHARE:
            return None
        return self.margin_pct

    @property
    def billed_minor(self) -> int | None:
        """Invoiced less credit notes, minor units; None outside accounts and the total."""
        if self.invoiced_minor is None:
            return None
        return self.invoiced_minor + (self.credited_minor or 0)

    def billed_margin(self, currency: str) -> Decimal | None:
        """What the invoices billed (net of credit notes) less the usage's cost."""
        billed = self.billed_minor
        return None if billed is None else from_minor(billed, currency) - self.cost

    @property
    def cost_per_million_tokens(self) -> Decimal | None:
        """Energy per measured token plus GPU time per costed token: each part over the
        tokens whose cost it knows, so neither is diluted by tokens it cannot see."""
        energy, gpu = self.energy_cost_per_million_tokens, self.gpu_cost_per_million_tokens
        return None if energy is None or gpu is None else energy + gpu

    @property
    def unpriced(self) -> bool:
        """All of its usage is without a price: its revenue is unknown, not zero."""
        return self.requests > 0 and self.unpriced_requests == self.requests

    @property
    def label(self) -> str:
        if self.dimension == "total":
            return "total"
        if self.key is None:
            return f"{self.keys} others"
        if self.key == UNALLOCATED:
            return "unallocated (backend hours without requests)"
        if self.dimension == "project" and self.key == NO_PROJECT:
            return "no project (keys deleted before projects)"
        if self.unknown_account:
            return f"unknown account #{self.key} (not invoiced)"
        if self.account_name is not None:
            return f"{self.account_name} (#{self.key})"
        return self.key


@dataclass(frozen=True)
class Gaps:
    """What the figures cannot see: backends whose usage had no energy measured or no cost
    model, usage without a price, per tier and model, and a currency usage is not rated in."""

    unmeasured_backends: list[str]
    uncosted_backends: list[str]
    unpriced: list[Unpriced]
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        found = list(self.notes)
        if self.unmeasured_backends:
            found.append("No energy measured on " + ", ".join(self.unmeasured_backends) + ".")
        if self.uncosted_backends:
            found.append("No cost model for " + ", ".join(self.uncosted_backends) + ".")
        for item in self.unpriced:
            found.append(
                f"Unpriced: {item.tier} / {item.model}, {item.tokens:,} tokens in "
                f"{item.requests:,} requests (no price in the book in force)."
            )
        return found


@dataclass(frozen=True, slots=True)
class Document:
    """An invoice or credit note of the month (report_invoices.sql)."""

    number: str
    kind: str
    account_id: int
    account_name: str
    corrects: str | None
    period_start: datetime
    period_end: datetime
    total_minor: int
    finalised_at: datetime
    payment: str
    paid_at: datetime | None

    def paid(self, as_of: datetime) -> bool:
        return self.payment == Invoice.Payment.PAID and (
            self.paid_at is None or self.paid_at <= as_of
        )

    def outstanding(self, as_of: datetime) -> bool:
        """An invoice with something to collect that was not paid by `as_of`."""
        return self.kind == Invoice.Kind.INVOICE and self.total_minor > 0 and not self.paid(as_of)

    def age_days(self, as_of: datetime) -> int:
        return (as_of - self.finalised_at).days


@dataclass(frozen=True, slots=True)
class Part:
    """Invoice lines summed per tier, part (usage, included, plan_fee, other) and usage
    month (report_invoice_lines.sql)."""

    tier: str
    part: str
    usage_month: datetime
    amount_minor: int
    amount: Decimal
    quantity: int


@dataclass(frozen=True, slots=True)
class Usage:
    """The month's ledger usage of one account by what became of it (report_usage.sql)."""

    kind: str
    account_id: int
    requests: int
    tokens: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Step:
    """A line of the reconciliation: an amount in minor units (a total when `total`)."""

    key: str
    label: str
    minor: int
    note: str = ""
    total: bool = False
    tokens: int | None = None


# What became of usage not on the month's invoices (report_usage.sql's classes).
UNBILLED = {
    "open": "the month is not closed yet: billed when it closes",
    "billed_later": "arrived after the close: billed on a later invoice as prior-period lines",
    "waiting": "arrived after the last close: the next close bills it (prior-period lines)",
}


@dataclass(frozen=True)
class Billing:
    """The month's invoices and the ledger's usage as the close sees it."""

    documents: list[Document]
    parts: list[Part]
    usage: list[Usage]
    # Whether the report's currency is the one usage is rated in (billing's).
    rated: bool
    # The month's close (None while open) and the last close's cutoffs.
    cutoff: datetime | None

    @property
    def invoices(self) -> list[Document]:
        return [d for d in self.documents if d.kind == Invoice.Kind.INVOICE]

    @property
    def credit_notes(self) -> list[Document]:
        return [d for d in self.documents if d.kind == Invoice.Kind.CREDIT_NOTE]

    @property
    def invoiced_minor(self) -> int:
        return sum(d.total_minor for d in self.invoices)

    @property
    def credited_minor(self) -> int:
        return sum(d.total_minor for d in self.credit_notes)

    @property
    def net_minor(self) -> int:
        return self.invoiced_minor + self.credited_minor

    def usage_of(self, kind: str) -> list[Usage]:
        return [u for u in self.usage if u.kind == kind]


@dataclass(frozen=True)
class FinanceReport:
    period_start: datetime
    period_end: datetime
    currency: str
    total: Line
    lines: dict[str, list[Line]]
    days: list[Line]
    gaps: Gaps
    billing: Billing
    # The instant the report read its data: ageing and payments are as of it.
    data_as_of: datetime
    # How far the jobs behind the figures had got then (None: never ran).
    rolled_up_to: datetime | None = None
    margins_to: datetime | None = None
    closed_to: datetime | None = None

    @property
    def period(self) -> str:
        return f"{self.period_start:%Y-%m}"

    @property
    def generated_at(self) -> datetime:
        return self.data_as_of

    @property
    def steps(self) -> list[Step]:
        return reconciliation(self)


def period_parse(text: str) -> datetime:
    """`2026-11` -> the month's first instant, UTC."""
    try:
        start = datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise ValueError(f"a period is a month, YYYY-MM, not {text!r}") from None
    if (start.year, start.month) == (MAXYEAR, 12):
        raise ValueError(f"{text} ends past the last date there is")
    return start.replace(tzinfo=UTC)


@replica_reads()
def finance_report(
    *,
    period_start: datetime,
    currency: str = "USD",
    top: int | None = TOP,
    now: datetime | None = None,
    with_billing: bool = True,
) -> FinanceReport:
    """The month's report: the stored margins, `top` keys per dimension (None: all), and,
    `with_billing`, its invoices and the ledger's usage as the close sees it, as of `now`.

    A currency other than billing's that the month has neither margins nor invoices in is
    refused (ReportError): a report of zeros would say nothing was billed.

    Read from the replica where there is one (config/db_routing.py): the data is then as of
    its lag ago, which data_as_of says."""
    data_as_of = now or timezone.now() - replica_lag()
    period_end = _month_after(period_start)
    rated = currency == billing_currency()
    if not rated and currency not in currencies(period_start=period_start):
        found = ", ".join(sorted(currencies(period_start=period_start) | {billing_currency()}))
        raise ReportError(
            f"nothing in {currency} for {period_start:%Y-%m}: usage is rated in "
            f"{billing_currency()} and no invoice of the month is in {currency} "
            f"(figures exist in {found})"
        )
    period: dict[str, Any] = {"since": period_start, "until": period_end, "currency": currency}
    with reading().cursor() as cursor:
        cursor.execute(_MARGINS, {**period, "top": top})
        rows = [_line(row) for row in cursor.fetchall()]
    billing = _billing(period_start, period_end, currency, rated=rated, wanted=with_billing)
    notes = []
    if not rated:
        notes.append(
            f"No usage figures in {currency}: usage is rated in {billing_currency()}, "
            f"billing's currency; this report shows the month's {currency} invoices."
        )
    return FinanceReport(
        period_start=period_start,
        period_end=period_end,
        currency=currency,
        total=next(line for line in rows if line.dimension == "total"),
        lines={d: [line for line in rows if line.dimension == d] for d in DIMENSIONS},
        days=[line for line in rows if line.dimension == "day"],
        gaps=_gaps(period_start, period_end, currency, notes),
        billing=billing,
        data_as_of=data_as_of,
        rolled_up_to=watermark("rollups"),
        margins_to=watermark("margins"),
        closed_to=watermark("invoices"),
    )


def currencies(*, period_start: datetime) -> set[str]:
    """The currencies the month has margins or finalised invoices in."""
    margins = Margin.objects.filter(grain=Margin.Grain.MONTH, bucket=period_start)
    invoices = Invoice.objects.filter(status=Invoice.Status.FINALISED, period_start=period_start)
    return set(margins.values_list("currency", flat=True).distinct()) | set(
        invoices.values_list("currency", flat=True).distinct()
    )


def _billing(
    period_start: datetime, period_end: datetime, currency: str, *, rated: bool, wanted: bool
) -> Billing:
    cutoff = month_close(period_start)
    if not wanted:
        return Billing([], [], [], rated, cutoff)
    last = month_closed_last()
    last_cutoff = max(cutoff, last[1]) if cutoff is not None and last is not None else cutoff
    params: dict[str, Any] = {"since": period_start, "until": period_end, "currency": currency}
    with reading().cursor() as cursor:
        cursor.execute(_INVOICES, params)
        documents = [Document(*row) for row in cursor.fetchall()]
        cursor.execute(_INVOICE_LINES, params)
        parts = [
            Part(row[0], row[1], row[2], int(row[3]), row[4], int(row[5]))
            for row in cursor.fetchall()
        ]
        usage: list[Usage] = []
        if rated:
            cursor.execute(
                _USAGE,
                {
                    **params,
                    "cutoff": cutoff,
                    "last_cutoff": last_cutoff,
                    "fee_exempt": FEE_EXEMPT,
                    **_rolled(cutoff),
                },
            )
            usage = [
                Usage(row[0], row[1], int(row[2]), int(row[3]), row[4]) for row in cursor.fetchall()
            ]
    return Billing(documents, parts, usage, rated, cutoff)


def _rolled(cutoff: datetime | None) -> dict[str, datetime]:
    """What the rollups hold (report_usage.sql): the hours before `rolled_until`, with the
    records stored by `rolled_by`; the ledger is read after `after`."""
    rolled_until, rolled_by = watermark("rollups"), rollups_arrived()
    if rolled_until is None or rolled_by is None:
        return {"rolled_until": LONG_AGO, "rolled_by": LONG_AGO, "after": LONG_AGO}
    after = min(cutoff, rolled_by) if cutoff is not None else rolled_by
    return {"rolled_until": rolled_until, "rolled_by": rolled_by, "after": after}


def _gaps(period_start: datetime, period_end: datetime, currency: str, notes: list[str]) -> Gaps:
    """Every backend of the month, whatever the top keys shown, and why it is unmeasured."""
    backends = Margin.objects.filter(
        grain=Margin.Grain.MONTH,
        bucket=period_start,
        currency=currency,
        dimension=Margin.Dimension.BACKEND,
        tokens__gt=0,
    ).order_by("key")
    unmeasured = list(backends.filter(measured_tokens=0).values_list("key", flat=True))
    telemetry = dict(
        Backend.objects.filter(name__in=unmeasured).values_list("name", "telemetry_url")
    )
    why = {True: "telemetry, no energy attributed", False: "no telemetry"}
    return Gaps(
        unmeasured_backends=[f"{name} ({why[bool(telemetry.get(name))]})" for name in unmeasured],
        uncosted_backends=list(backends.filter(costed_tokens=0).values_list("key", flat=True)),
        unpriced=usage_unpriced(since=period_start, until=period_end),
        notes=notes,
    )


# The reconciliation ---------------------------------------------------------------------------


def reconciliation(report: FinanceReport) -> list[Step]:
    """From list-price revenue to invoiced revenue (the sum of the month's invoices'
    total_minor) and net billed, in minor units, every step adding up exactly.

    Each step's unrounded amount is rounded by billing.money; the invoices rounded each line
    on its own, so what separates the two is one "rounding" step, never left implicit."""
    billing, currency = report.billing, report.currency
    steps: list[Step] = []
    current = [p for p in billing.parts if p.usage_month >= report.period_start]
    if billing.rated:
        steps += _usage_steps(report, current)
    else:
        usage_minor = sum(p.amount_minor for p in current if p.part == "usage")
        label = f"Usage invoiced (usage figures are rated in {billing_currency()})"
        steps.append(Step("usage_invoiced", label, usage_minor))
    included = sum(p.amount_minor for p in current if p.part == "included")
    steps.append(Step("included", "Included tokens (plan allowance)", included))
    fees = sum(p.amount_minor for p in current if p.part == "plan_fee")
    steps.append(Step("plan_fees", "Plan fees (subscriptions)", fees))
    prior: dict[datetime, int] = defaultdict(int)
    for part in billing.parts:
        if part.usage_month < report.period_start and part.part in ("usage", "included"):
            prior[part.usage_month] += part.amount_minor
    for month, minor in sorted(prior.items()):
        steps.append(
            Step(f"prior_{month:%Y-%m}", f"Prior-period lines: usage of {month:%Y-%m}", minor)
        )
    other = sum(p.amount_minor for p in billing.parts if p.part == "other")
    if other:
        steps.append(Step("other", "Other lines on the invoices", other))
    rounding = billing.invoiced_minor - sum(step.minor for step in steps)
    if rounding:
        note = "the invoices round each line to the minor unit (billing.money)"
        steps.append(Step("rounding", "Rounding", rounding, note))
    invoices, notes = billing.invoices, billing.credit_notes
    invoiced = f"Invoiced revenue (the month's {len(invoices)} invoices in {currency})"
    return [
        *steps,
        Step("invoiced", invoiced, billing.invoiced_minor, total=True),
        Step("credit_notes", f"Credit notes ({len(notes)})", billing.credited_minor),
        Step("net_billed", "Net billed", billing.net_minor, total=True),
    ]


def _usage_steps(report: FinanceReport, current: list[Part]) -> list[Step]:
    """List price (the rollups' margins), less what of the month's usage is not on its
    invoices, so that what is left is the usage the invoices billed."""
    billing, total = report.billing, report.total
    listed = total.revenue + total.unknown_revenue
    steps = [
        Step(
            "list_price",
            "Revenue at list price of all the month's usage, unknown accounts included (rollups)",
            to_minor(listed, report.currency),
        )
    ]
    ledger = sum((u.amount for u in billing.usage), Decimal(0))
    if ledger != listed:
        label = "Usage the margins do not hold yet (run the margin job)"
        steps.append(Step("margins_behind", label, to_minor(ledger - listed, report.currency)))
    unknown = billing.usage_of("unknown")
    steps.append(
        _deduction(
            "unknown_accounts",
            "Usage of unknown accounts, not invoiced",
            unknown,
            report.currency,
            f"{len({u.account_id for u in unknown})} account ids not in customers",
        )
    )
    unpriced = billing.usage_of("unpriced")
    tokens = sum(u.tokens for u in unpriced)
    steps.append(
        Step(
            "unpriced", "Unpriced usage (no price in force)", 0, f"{tokens:,} tokens", False, tokens
        )
    )
    for kind, why in UNBILLED.items():
        rows = billing.usage_of(kind)
        if rows:
            steps.append(
                _deduction(kind, f"Usage not on these invoices: {why}", rows, report.currency)
            )
    invoiced_usage = sum((p.amount for p in current if p.part == "usage"), Decimal(0))
    billed = sum((u.amount for u in billing.usage_of("invoiced")), Decimal(0))
    if invoiced_usage != billed:
        label = "Invoiced usage differs from the ledger rated now (a book or record changed)"
        steps.append(
            Step("ledger_difference", label, to_minor(invoiced_usage - billed, report.currency))
        )
    return steps


def _deduction(key: str, label: str, rows: list[Usage], currency: str, note: str = "") -> Step:
    tokens = sum(u.tokens for u in rows)
    amount = sum((u.amount for u in rows), Decimal(0))
    note = ", ".join(part for part in (f"{tokens:,} tokens", note) if part)
    return Step(key, label, -to_minor(amount, currency), note, False, tokens)


def ageing(report: FinanceReport) -> list[tuple[str, int, int]]:
    """The month's outstanding invoices by days since finalised, as of the report's data:
    (bucket, invoices, minor units)."""
    as_of = report.data_as_of
    buckets = [(label, 0, 0) for *_, label in AGEING] + [(AGEING_LAST, 0, 0)]
    for document in report.billing.invoices:
        if not document.outstanding(as_of):
            continue
        age = document.age_days(as_of)
        index = next((n for n, (_, last, _) in enumerate(AGEING) if age <= last), len(AGEING))
        label, count, minor = buckets[index]
        buckets[index] = (label, count + 1, minor + document.total_minor)
    return buckets


def collection(report: FinanceReport) -> list[tuple[str, int, int]]:
    """Paid and outstanding: (state, documents, minor units) of the month's documents."""
    as_of, billing = report.data_as_of, report.billing
    states: dict[str, tuple[int, int]] = {}

    def add(state: str, document: Document) -> None:
        count, minor = states.get(state, (0, 0))
        states[state] = (count + 1, minor + document.total_minor)

    for document in billing.invoices:
        if document.total_minor == 0:
            add("nothing to collect (total zero)", document)
        elif document.paid(as_of):
            add("paid", document)
        elif document.payment == Invoice.Payment.FAILED:
            add("outstanding: payment failed", document)
        elif document.payment in (Invoice.Payment.OPEN, Invoice.Payment.PAID):
            add("outstanding: open at Stripe", document)  # paid, but after `as_of`
        else:
            add("outstanding: not sent to Stripe", document)
    for document in billing.credit_notes:
        add("credit notes", document)
    return [(state, count, minor) for state, (count, minor) in states.items()]


def split_by_tier(report: FinanceReport) -> list[tuple[str, dict[str, int]]]:
    """What the invoices billed per tier: usage, included tokens (a deduction), plan fees
    (subscription), prior-period lines and the rest, in minor units; the total last."""
    columns = ("usage", "included", "plan_fee", "prior", "other")
    tiers: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(columns, 0))
    for part in report.billing.parts:
        column = part.part
        if part.usage_month < report.period_start and part.part in ("usage", "included"):
            column = "prior"
        tiers[part.tier][column] += part.amount_minor
    rows = sorted(tiers.items())
    total = {column: sum(row[column] for _, row in rows) for column in columns}
    return [*rows, ("total", total)] if rows else []


# The columns of report_margins.sql that are counts: PostgreSQL sums bigints to numeric.
_COUNTS = {3, 4, *range(9, 16), 26, 27}


def _line(row: tuple[Any, ...]) -> Line:
    """A row of report_margins.sql, whose columns are Line's fields in order."""
    values: list[Any] = [
        int(value) if n in _COUNTS and value is not None else value for n, value in enumerate(row)
    ]
    return Line(*values)


def _month_after(start: datetime) -> datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
