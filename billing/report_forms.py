"""The finance report's forms (billing.reports has the figures): the CSV, unrounded, with
every key; the HTML and PDF, which share their tables and charts, rounded by billing.money's
rule and cut to the top keys per dimension; and the month by tier as the console's dashboard
shows it (docs/billing.md, "Finance report").
"""

import csv
import io
import re
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.template.loader import render_to_string
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing import charts
from billing.models import Invoice
from billing.money import AMOUNT_PLACES, from_minor, minor_exponent, to_minor
from billing.reports import (
    DIMENSIONS,
    SIGNIFICANT_DIGITS,
    UNALLOCATED,
    UNBILLED,
    Document,
    FinanceReport,
    Line,
    ReportFormat,
    ageing,
    collection,
    finance_report,
    split_by_tier,
)


def month_by_tier(*, period_start: datetime, currency: str) -> dict[str, Any]:
    """The month's report as the console's dashboard shows it: its summary, a table by tier
    with the total, and its gaps, formatted as in the HTML form (the same rules: ratios over
    what was measured, coverage beside them, unpriced usage as unpriced)."""
    report = finance_report(
        period_start=period_start, currency=currency, top=None, with_billing=False
    )
    return {
        "period": report.period,
        "currency": currency,
        "summary": _summary(report),
        "header": ["tier", *_HEADER[1:]],
        "rows": [_cells(line, currency) for line in [*report.lines["tier"], report.total]],
        "gaps": report.gaps.lines(),
    }


def report_render(
    *, period_start: datetime, currency: str, fmt: ReportFormat, now: datetime | None = None
) -> bytes:
    """The report as a file of the given form."""
    if fmt == "csv":
        report = finance_report(period_start=period_start, currency=currency, top=None, now=now)
        return report_csv(report).encode()
    report = finance_report(period_start=period_start, currency=currency, now=now)
    return report_html(report).encode() if fmt == "html" else report_pdf(report)


# CSV -----------------------------------------------------------------------------------------

_CSV_HEADER = [
    "period",
    "currency",
    "dimension",
    "key",
    "label",
    "tokens",
    "energy_kwh",
    "revenue",
    "energy_cost",
    "gpu_cost",
    "cost",
    "margin",
    "margin_pct",
    "cost_per_million_tokens",
    "tokens_per_kwh",
    "requests",
    "measured_requests",
    "measured_tokens",
    "costed_tokens",
    "unpriced_requests",
    "unpriced_tokens",
    "measured_token_share",
    "measured_request_share",
    "costed_token_share",
    "joules_per_token",
    "energy_cost_per_million_tokens",
    "gpu_cost_per_million_tokens",
    "unknown_account_revenue",
    "invoiced",
    "credited",
    "billed",
    "margin_on_billed",
    "amount",
    "documents",
    "account_id",
    "kind",
    "payment",
    "finalised_at",
    "paid_at",
    "corrects",
    "data_as_of",
]


def report_csv(report: FinanceReport) -> str:
    """Every figure unrounded, one row per key and per day, the total first; then the
    reconciliation, the invoice register, the invoices' split, paid and outstanding with
    the ageing, and the usage not invoiced, each row named by its `dimension`. A key whose
    usage is all unpriced has no revenue and no margin (empty), not zero. Numbers are plain
    decimals with every place they are kept to ("0.000000000000", never "0E-12"), which any
    spreadsheet reads."""
    out = io.StringIO()
    writer = csv.DictWriter(out, _CSV_HEADER, lineterminator="\n")
    writer.writeheader()
    base = {
        "period": report.period,
        "currency": report.currency,
        "data_as_of": report.data_as_of.isoformat(),
    }
    for line in [*_all_lines(report), *report.days]:
        writer.writerow(base | _csv_plain(_csv_line(line, report.currency)))
    for row in _csv_billing(report):
        writer.writerow(base | _csv_plain(row))
    return out.getvalue()


def _csv_plain(row: dict[str, object]) -> dict[str, object]:
    """`row` with its decimals written out in full: str() of a Decimal uses exponent notation
    for zero at 12 places and for tiny amounts ("0E-12", "1E-12"), format "f" never does."""
    return {
        key: format(value, "f") if isinstance(value, Decimal) else value
        for key, value in row.items()
    }


def _csv_line(line: Line, currency: str) -> dict[str, object]:
    def money(minor: int | None) -> Decimal | None:
        return None if minor is None else from_minor(minor, currency)

    return {
        "dimension": line.dimension,
        "key": line.key,
        "label": line.label,
        "tokens": line.tokens,
        "energy_kwh": line.energy_kwh,
        "revenue": None if line.unpriced else line.revenue,
        "energy_cost": line.energy_cost,
        "gpu_cost": line.gpu_cost,
        "cost": line.cost,
        "margin": None if line.unpriced else line.margin,
        "margin_pct": line.margin_pct,
        "cost_per_million_tokens": line.cost_per_million_tokens,
        "tokens_per_kwh": line.tokens_per_kwh,
        "requests": line.requests,
        "measured_requests": line.measured_requests,
        "measured_tokens": line.measured_tokens,
        "costed_tokens": line.costed_tokens,
        "unpriced_requests": line.unpriced_requests,
        "unpriced_tokens": line.unpriced_tokens,
        "measured_token_share": line.measured_token_share,
        "measured_request_share": line.measured_request_share,
        "costed_token_share": line.costed_token_share,
        "joules_per_token": line.joules_per_token,
        "energy_cost_per_million_tokens": line.energy_cost_per_million_tokens,
        "gpu_cost_per_million_tokens": line.gpu_cost_per_million_tokens,
        "unknown_account_revenue": line.unknown_revenue,
        "invoiced": money(line.invoiced_minor),
        "credited": money(line.credited_minor),
        "billed": money(line.billed_minor),
        "margin_on_billed": line.billed_margin(currency),
    }


def _csv_billing(report: FinanceReport) -> Iterator[dict[str, object]]:
    currency = report.currency
    for step in report.steps:
        yield {
            "dimension": "reconciliation",
            "key": step.key,
            "label": step.label,
            "amount": from_minor(step.minor, currency),
            "tokens": step.tokens,
        }
    for d in report.billing.documents:
        yield {
            "dimension": "document",
            "key": d.number,
            "label": f"{d.account_name} (#{d.account_id})",
            "amount": from_minor(d.total_minor, currency),
            "account_id": d.account_id,
            "kind": d.kind,
            "payment": _payment(d, report.data_as_of),
            "finalised_at": d.finalised_at.isoformat(),
            "paid_at": d.paid_at.isoformat() if d.paid_at else None,
            "corrects": d.corrects,
        }
    for part in report.billing.parts:
        yield {
            "dimension": "invoice_lines",
            "key": f"{part.tier}/{part.part}/{part.usage_month:%Y-%m}",
            "label": f"{part.part} of {part.tier}, usage of {part.usage_month:%Y-%m}",
            "amount": part.amount,
            "tokens": part.quantity if part.part in ("usage", "included") else None,
        }
    for state, count, minor in collection(report):
        yield {
            "dimension": "collection",
            "key": state,
            "label": state,
            "amount": from_minor(minor, currency),
            "documents": count,
        }
    for label, count, minor in ageing(report):
        yield {
            "dimension": "ageing",
            "key": label,
            "label": f"outstanding {label} after finalising",
            "amount": from_minor(minor, currency),
            "documents": count,
        }
    for usage in report.billing.usage:
        if usage.kind != "invoiced":
            yield {
                "dimension": "not_invoiced",
                "key": usage.kind,
                "label": _usage_label(usage.kind),
                "amount": usage.amount,
                "tokens": usage.tokens,
                "requests": usage.requests,
                "account_id": usage.account_id,
            }


def _usage_label(kind: str) -> str:
    labels = {
        "unknown": "usage of an unknown account, not invoiced",
        "unpriced": "unpriced usage (no price in force)",
    }
    return labels.get(kind) or UNBILLED[kind]


# HTML and PDF --------------------------------------------------------------------------------


def report_html(report: FinanceReport) -> str:
    """A page with the charts as inline SVG and the tables: nothing loaded from elsewhere."""
    return render_to_string(
        "billing/report.html",
        {
            "report": report,
            "summary": _summary(report),
            "gaps": report.gaps.lines(),
            "charts": [charts.svg(drawing, name=name) for name, drawing in _charts(report)],
            "finance": _finance_tables(report),
            "tables": _tables(report),
            "as_of": _as_of(report),
            "notes": NOTES,
        },
    )


NOTES = (
    "Cost = energy (kWh x electricity price x PUE) + GPU time; hours a backend had no request "
    'are its own cost only (the "unallocated" rows). Revenue is usage at list price of '
    "known accounts; usage of account ids that do not exist is never invoiced and is shown "
    "apart. Margin % is of the priced usage (revenue less the cost of all but the unpriced "
    "usage, over revenue), shown only where revenue is at least 10% of that cost (n/a below: "
    "the percentage would only say revenue is negligible); the margin beside it is always "
    "shown. Margin on billed = what the month's invoices billed, net of credit notes, less "
    "the month's cost (billed includes plan fees and prior-period lines). Ratios divide only "
    "what was measured: tokens per kWh counts the tokens whose energy was attributed, cost "
    "per 1M tokens is energy cost per measured token plus GPU cost per token of backends "
    "with a cost model. Amounts are shown to at least four significant digits (the CSV has "
    "them unrounded); invoice amounts are the invoices' own minor units."
)


def report_pdf(report: FinanceReport) -> bytes:
    """The same summary, charts and tables, printable (A4 landscape, numbered pages)."""
    out = io.BytesIO()
    styles = getSampleStyleSheet()
    styles["Heading2"].keepWithNext = 1
    document = SimpleDocTemplate(
        out,
        pagesize=landscape(A4),
        leftMargin=12 * mm,
        rightMargin=12 * mm,
        topMargin=12 * mm,
        bottomMargin=14 * mm,
        title=_title(report),
    )
    story: list[Any] = [Paragraph(_title(report), styles["Title"])]
    story.append(Paragraph(_as_of(report), styles["Normal"]))
    pairs = [[Paragraph(f"<b>{k}</b>: {v}", styles["Normal"]) for k, v in _summary(report)]]
    cells = [pair for row in pairs for pair in row]
    summary = [cells[i : i + 3] for i in range(0, len(cells), 3)]
    summary[-1] += [""] * (3 - len(summary[-1]))
    story.append(Table(summary, colWidths=[document.width / 3] * 3, hAlign="LEFT"))
    for gap in report.gaps.lines():
        story.append(Paragraph(gap, styles["Normal"]))
    story.append(Spacer(1, 4 * mm))
    half = (document.width - 6 * mm) / 2
    drawings = [_scaled(drawing, half) for _, drawing in _charts(report)]
    for pair in (drawings[i : i + 2] for i in range(0, len(drawings), 2)):
        story.append(Table([pair], hAlign="LEFT"))
    for title, header, rows in [*_finance_tables(report), *_tables(report)]:
        story.append(Spacer(1, 4 * mm))
        story.append(Paragraph(title, styles["Heading2"]))
        story.append(_pdf_table([header, *rows], document.width))
    story.append(Spacer(1, 4 * mm))
    story.append(Paragraph(NOTES, styles["Normal"]))
    document.build(story, canvasmaker=_NumberedCanvas)
    return out.getvalue()


class _NumberedCanvas(Canvas):  # type: ignore[misc]  # reportlab is untyped
    """Writes "page N of M" at the foot of every page: pages are kept until the count is
    known, then drawn."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []

    def showPage(self) -> None:
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        for page in self._pages:
            self.__dict__.update(page)
            width, _ = self._pagesize
            self.setFont("Helvetica", 8)
            self.drawRightString(
                width - 12 * mm, 7 * mm, f"page {self._pageNumber} of {len(self._pages)}"
            )
            super().showPage()
        super().save()


def _title(report: FinanceReport) -> str:
    return f"Finance report {report.period} ({report.currency})"


def _as_of(report: FinanceReport) -> str:
    def at(value: datetime | None) -> str:
        return "never" if value is None else f"{value:%Y-%m-%d %H:%M} UTC"

    closed = "open (not closed)" if report.billing.cutoff is None else "closed"
    return (
        f"{report.period_start:%Y-%m-%d} to {report.period_end:%Y-%m-%d} (UTC, end excluded), "
        f"amounts in {report.currency}. Data as of {at(report.data_as_of)}: usage rolled up to "
        f"{at(report.rolled_up_to)}, margins to {at(report.margins_to)}, invoices closed up "
        f"to {at(report.closed_to)}; this month is {closed}."
    )


def _summary(report: FinanceReport) -> list[tuple[str, str]]:
    total, currency, billing = report.total, report.currency, report.billing
    pct = _margin_pct(total).replace("negligible", "revenue < 10% of cost")
    summary = [
        ("Revenue at list price", _revenue(total, currency)),
        ("Energy cost", _money(total.energy_cost, currency)),
        ("GPU cost", _money(total.gpu_cost, currency)),
        ("Margin (list price)", f"{_margin(total, currency)} · margin % {pct}"),
    ]
    if billing.documents:
        billed = _minor(billing.net_minor, currency)
        margin = total.billed_margin(currency)
        summary += [
            ("Invoiced revenue", _minor(billing.invoiced_minor, currency)),
            ("Net billed (less credit notes)", billed),
            ("Margin on billed", "n/a" if margin is None else _money(margin, currency)),
        ]
    if total.unknown_revenue:
        summary.append(
            ("Usage of unknown accounts, not invoiced", _money(total.unknown_revenue, currency))
        )
    return [
        *summary,
        ("Tokens", f"{total.tokens:,}"),
        ("Unpriced tokens", f"{total.unpriced_tokens:,}"),
        ("Cost per 1M tokens", _unit_cost(total.cost_per_million_tokens, currency)),
        ("Tokens per kWh", _count(total.tokens_per_kwh)),
        ("Joules per token", _ratio(total.joules_per_token)),
        ("Energy measured", _coverage(total, requests=True)),
        ("Tokens with a cost model", _share(total.costed_token_share)),
    ]


_HEADER = [
    "",
    "tokens",
    "kWh",
    "revenue",
    "energy cost",
    "GPU cost",
    "margin",
    "margin %",
    "cost / 1M tokens",
    "tokens / kWh",
    "energy measured (tokens · requests)",
    "unpriced tokens",
]
_BILLED_HEADER = ["billed (net)", "margin on billed"]
Tables = list[tuple[str, list[str], list[list[str]]]]


def _tables(report: FinanceReport) -> Tables:
    currency = report.currency
    tables: Tables = []
    for dimension in DIMENSIONS:
        lines = report.lines[dimension]
        header = [dimension, *_HEADER[1:]]
        if dimension == "account":
            header += _BILLED_HEADER
            rows = [_cells(line, currency) + _billed_cells(line, currency) for line in lines]
        else:
            rows = [_cells(line, currency) for line in lines]
        tables.append((f"By {dimension}", header, rows))
    days = [_cells(line, currency) for line in report.days]
    tables.append(("Per day", ["day", *_HEADER[1:]], days))
    total = _cells(report.total, currency) + _billed_cells(report.total, currency)
    tables.append(("Total", [*_HEADER, *_BILLED_HEADER], [total]))
    return tables


def _finance_tables(report: FinanceReport) -> Tables:
    """What finance signs: the reconciliation, the register, the split, collection, ageing,
    the usage not invoiced."""
    currency, billing = report.currency, report.billing
    steps = [[s.label, _minor(s.minor, currency), s.note] for s in report.steps]
    register = [
        [
            d.number,
            f"{d.account_name} (#{d.account_id})",
            f"{d.period_start:%Y-%m-%d} to {d.period_end:%Y-%m-%d}",
            "credit note" + (f" for {d.corrects}" if d.corrects else "")
            if d.kind == Invoice.Kind.CREDIT_NOTE
            else "invoice",
            _minor(d.total_minor, currency),
            _payment(d, report.data_as_of),
            f"{d.finalised_at:%Y-%m-%d}",
        ]
        for d in billing.documents
    ]
    split = [
        [tier]
        + [
            _minor(row[column], currency)
            for column in ("usage", "included", "plan_fee", "prior", "other")
        ]
        + [_minor(sum(row.values()), currency)]
        for tier, row in split_by_tier(report)
    ]
    paid = [
        [state, str(count), _minor(minor, currency)] for state, count, minor in collection(report)
    ]
    aged = [[label, str(count), _minor(minor, currency)] for label, count, minor in ageing(report)]
    unbilled = [
        [
            _account_label(report, u.account_id),
            _usage_label(u.kind),
            f"{u.tokens:,}",
            f"{u.requests:,}",
            _money(u.amount, currency) if u.kind != "unpriced" else "unpriced",
        ]
        for u in billing.usage
        if u.kind != "invoiced"
    ]
    empty = [
        [f"no invoice or credit note in {currency} for {report.period}", "", "", "", "", "", ""]
    ]
    return [
        ("Reconciliation: list price to invoiced revenue", ["step", "amount", "note"], steps),
        (
            "Invoice register",
            ["number", "account", "period", "kind", "total", "payment", "finalised"],
            register or empty,
        ),
        (
            "Subscription and usage revenue (invoiced, by tier)",
            ["tier", "usage", "included tokens", "plan fees", "prior-period", "other", "invoiced"],
            split,
        ),
        ("Paid and outstanding", ["state", "documents", "amount"], paid),
        (
            f"Outstanding by age since finalised (as of {report.data_as_of:%Y-%m-%d %H:%M} UTC)",
            ["age", "invoices", "amount"],
            aged,
        ),
        (
            "Usage not on the month's invoices (unknown accounts, unpriced, not yet billed)",
            ["account", "why", "tokens", "requests", "list price"],
            unbilled,
        ),
    ]


def _payment(document: Document, as_of: datetime) -> str:
    """The payment state as of the report's data: an invoice paid after it was open then."""
    if document.paid(as_of):
        return "paid"
    if document.payment == Invoice.Payment.PAID:
        return "open (paid later)"
    return document.payment


def _account_label(report: FinanceReport, account_id: int) -> str:
    names = {line.key: line.label for line in report.lines["account"]}
    return names.get(str(account_id), f"#{account_id}")


def _cells(line: Line, currency: str) -> list[str]:
    return [
        line.label,
        f"{line.tokens:,}",
        _quantity(line.energy_kwh),
        _revenue(line, currency),
        _money(line.energy_cost, currency),
        _money(line.gpu_cost, currency),
        _margin(line, currency),
        _margin_pct(line),
        _unit_cost(line.cost_per_million_tokens, currency),
        _count(line.tokens_per_kwh),
        _coverage(line),
        f"{line.unpriced_tokens:,}",
    ]


def _billed_cells(line: Line, currency: str) -> list[str]:
    billed, margin = line.billed_minor, line.billed_margin(currency)
    if billed is None or margin is None:
        return ["", ""]
    return [_minor(billed, currency), _money(margin, currency)]


def _charts(report: FinanceReport) -> list[tuple[str, Drawing]]:
    def by(dimension: str, *, stacked_cost: bool = False) -> Drawing:
        lines = [line for line in report.lines[dimension] if line.key]
        names = [line.label for line in lines]
        if stacked_cost:
            return charts.bars(
                title=f"Cost by {dimension} ({report.currency})",
                categories=names,
                series=[
                    ("energy", [line.energy_cost for line in lines]),
                    ("GPU", [line.gpu_cost for line in lines]),
                ],
                stacked=True,
            )
        return charts.bars(
            title=f"Revenue, cost and margin by {dimension} ({report.currency})",
            categories=names,
            series=[
                ("revenue", [line.revenue for line in lines]),
                ("cost", [line.cost for line in lines]),
                ("margin", [line.margin for line in lines]),
            ],
        )

    accounts = _named(report.lines["account"])[:10]
    backends = _named(report.lines["backend"])
    models = _named(report.lines["model"])
    return [
        ("tier", by("tier")),
        ("model", by("model")),
        (
            "days",
            charts.trend(
                title=f"Revenue, cost and margin per day ({report.currency})",
                days=[(line.key or "")[5:] for line in report.days],
                series=[
                    ("revenue", [line.revenue for line in report.days]),
                    ("cost", [line.cost for line in report.days]),
                    ("margin", [line.margin for line in report.days]),
                ],
            ),
        ),
        ("backend", by("backend", stacked_cost=True)),
        (
            "tokens-per-kwh",
            charts.bars(
                title="Tokens per kWh by backend",
                categories=[line.label for line in backends],
                series=[("tokens per kWh", [line.tokens_per_kwh for line in backends])],
            ),
        ),
        (
            "cost-per-million",
            charts.bars(
                title=f"Cost per 1M tokens by model ({report.currency})",
                categories=[line.label for line in models],
                series=[("cost per 1M tokens", [line.cost_per_million_tokens for line in models])],
            ),
        ),
        (
            "accounts",
            charts.ranking(
                title=f"Top accounts by revenue ({report.currency})",
                categories=[line.label for line in accounts],
                values=[line.revenue for line in accounts],
            ),
        ),
    ]


def _named(lines: list[Line]) -> list[Line]:
    """The lines of known keys (a model, an account), not the rest, the unallocated cost or
    unknown accounts."""
    return [
        line for line in lines if line.key not in (None, UNALLOCATED) and not line.unknown_account
    ]


# Long headers, shortened in the PDF so that the widest tables fit a landscape A4 page.
_PDF_HEADER = {
    "energy measured (tokens · requests)": "measured (tok · req)",
    "cost / 1M tokens": "cost / 1M tok",
    "unpriced tokens": "unpriced tok",
    "margin on billed": "margin billed",
}
# A cell of figures: a number, or what stands in for one.
_NUMERIC = re.compile(r"^(-?\d|n/a|unpriced|not invoiced)")


def _pdf_table(rows: list[list[str]], width: float) -> Table:
    """A table that fits `width`: its font shrinks (7 to 5.5 points) until it does. Columns
    of figures are right-aligned, text left."""
    header = [_PDF_HEADER.get(cell, cell) for cell in rows[0]]
    body = rows[1:]
    numeric = [
        n > 0 and all(_NUMERIC.match(row[n]) for row in body if row[n]) for n in range(len(header))
    ]
    for size in (7, 6.5, 6, 5.5):
        table = Table([header, *body], repeatRows=1, hAlign="LEFT")
        style = [
            ("FONTSIZE", (0, 0), (-1, -1), size),
            ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
            ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
            ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f3f5f8")]),
            ("TOPPADDING", (0, 0), (-1, -1), 1.5),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
            ("LEFTPADDING", (0, 0), (-1, -1), 3),
            ("RIGHTPADDING", (0, 0), (-1, -1), 3),
        ]
        style += [("ALIGN", (n, 0), (n, -1), "RIGHT") for n, right in enumerate(numeric) if right]
        table.setStyle(TableStyle(style))
        if table.wrap(width, 0)[0] <= width:
            break
    return table


def _scaled(drawing: Drawing, width: float) -> Drawing:
    """A chart drawn `width` wide (two side by side across the page)."""
    factor = width / drawing.width
    drawing.scale(factor, factor)
    drawing.width, drawing.height = drawing.width * factor, drawing.height * factor
    return drawing


def _all_lines(report: FinanceReport) -> Iterator[Line]:
    yield report.total
    for dimension in DIMENSIONS:
        yield from report.lines[dimension]


def _minor(minor: int, currency: str) -> str:
    """An invoice amount, exactly as invoiced."""
    return f"{from_minor(minor, currency):,}"


def _money(amount: Decimal, currency: str) -> str:
    """At least SIGNIFICANT_DIGITS significant digits and the currency's minor unit, rounded
    by the one rule (billing.money's half to even, applied at the places shown)."""
    exponent = minor_exponent(currency)
    places = exponent
    if amount:
        places = min(max(exponent, SIGNIFICANT_DIGITS - 1 - amount.adjusted()), AMOUNT_PLACES)
    extra = places - exponent
    shown = from_minor(to_minor(amount.scaleb(extra), currency), currency).scaleb(-extra)
    return f"{shown:,.{places}f}"


def _revenue(line: Line, currency: str) -> str:
    """Usage without a price is worth an unknown amount: shown so, never as 0.00; usage of
    an unknown account is worth nothing to us: not invoiced."""
    if line.unknown_account:
        return f"not invoiced: {_money(line.unknown_revenue, currency)}"
    if line.unpriced:
        return "unpriced"
    if line.unpriced_tokens:
        return f"{_money(line.revenue, currency)} + unpriced"
    return _money(line.revenue, currency)


def _margin(line: Line, currency: str) -> str:
    return "unpriced" if line.unpriced else _money(line.margin, currency)


def _margin_pct(line: Line) -> str:
    if line.margin_pct is not None and line.margin_pct_shown is None:
        return "n/a (negligible)"
    return _percent(line.margin_pct_shown)


def _coverage(line: Line, *, requests: bool = False) -> str:
    """Share of tokens (and of requests) whose energy was measured."""
    if not line.tokens:
        return "n/a"
    tokens = _share(line.measured_token_share)
    if requests:
        return f"{tokens} of tokens, {_share(line.measured_request_share)} of requests"
    return f"{tokens} · {_share(line.measured_request_share)}"


def _share(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{_fixed(value * 100, 1)}%"


def _ratio(value: Decimal | None) -> str:
    return "n/a" if value is None else _fixed(value, 3)


def _unit_cost(amount: Decimal | None, currency: str) -> str:
    return "n/a" if amount is None else _money(amount, currency)


def _percent(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{_fixed(value, 1)}%"


def _quantity(value: Decimal) -> str:
    return _fixed(value, 3)


def _count(value: Decimal | None) -> str:
    return "n/a" if value is None else _fixed(value, 0)


def _fixed(value: Decimal, places: int) -> str:
    """Ratios and quantities, shown to a few places (amounts of money go through _money)."""
    return f"{value:,.{places}f}"
