"""The finance report for a month: revenue, cost (energy, GPU), margin and margin %, cost per
1M tokens and tokens per kWh, by tier, model, backend and account (docs/billing.md).

It reads the margins the margin job stored (billing_margin, month and day grains); the figures
are summed and divided in PostgreSQL (billing/sql/report_*.sql), kept unrounded in the CSV and
shown rounded only in the HTML and PDF forms, which share their tables and charts.

Ratios divide only what was measured: energy ratios the tokens whose energy was attributed,
cost ratios the tokens of backends with a cost model. Beside every ratio the report shows that
coverage, names the backends without energy or a cost model, and shows usage without a price
as unpriced with its tokens, never as revenue of zero (docs/billing.md, "Coverage").
"""

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import MAXYEAR, UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from django.db import connection
from django.template.loader import render_to_string
from django.utils import timezone
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing import charts
from billing.models import Margin
from billing.money import from_minor, to_minor
from billing.selectors import Unpriced, usage_unpriced
from fleet.models import Backend

ReportFormat = Literal["html", "csv", "pdf"]
REPORT_FORMATS: tuple[ReportFormat, ...] = ("html", "csv", "pdf")
CONTENT_TYPES: dict[ReportFormat, str] = {
    "html": "text/html; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "pdf": "application/pdf",
}
DIMENSIONS = ("tier", "model", "backend", "account")
# The key under which every dimension holds the cost of backend hours without requests.
UNALLOCATED = "(unallocated)"
# Keys per dimension shown in the HTML and PDF forms (the rest in one row); the CSV has all.
TOP = 15

_SQL = Path(__file__).parent / "sql"
_MARGINS = (_SQL / "report_margins.sql").read_text()
_DAYS = (_SQL / "report_days.sql").read_text()


@dataclass(frozen=True, slots=True)
class Line:
    """One key's figures (a tier, a model, ...), or the rest of the keys (key None), or the
    backends' hours without requests (key UNALLOCATED), or the period's total."""

    dimension: str
    key: str | None
    account_name: str | None
    keys: int
    tokens: int
    energy_kwh: Decimal
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

    @property
    def cost(self) -> Decimal:
        return self.energy_cost + self.gpu_cost

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost

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
        if self.account_name is not None:
            return f"{self.account_name} (#{self.key})"
        return self.key


@dataclass(frozen=True, slots=True)
class Day:
    day: date
    tokens: int
    energy_kwh: Decimal
    revenue: Decimal
    energy_cost: Decimal
    gpu_cost: Decimal

    @property
    def cost(self) -> Decimal:
        return self.energy_cost + self.gpu_cost

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost


@dataclass(frozen=True)
class Gaps:
    """What the figures cannot see: backends whose usage had no energy measured or no cost
    model, and usage without a price, per tier and model."""

    unmeasured_backends: list[str]
    uncosted_backends: list[str]
    unpriced: list[Unpriced]

    def lines(self) -> list[str]:
        found = []
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


@dataclass(frozen=True)
class FinanceReport:
    period_start: datetime
    period_end: datetime
    currency: str
    total: Line
    lines: dict[str, list[Line]]
    days: list[Day]
    gaps: Gaps
    generated_at: datetime

    @property
    def period(self) -> str:
        return f"{self.period_start:%Y-%m}"


def period_parse(text: str) -> datetime:
    """`2026-11` -> the month's first instant, UTC."""
    try:
        start = datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise ValueError(f"a period is a month, YYYY-MM, not {text!r}") from None
    if (start.year, start.month) == (MAXYEAR, 12):
        raise ValueError(f"{text} ends past the last date there is")
    return start.replace(tzinfo=UTC)


def finance_report(
    *, period_start: datetime, currency: str = "USD", top: int | None = TOP
) -> FinanceReport:
    """The month's report from the stored margins; `top` keys per dimension (None: all)."""
    period_end = _month_after(period_start)
    params: dict[str, Any] = {
        "grain": "month",
        "bucket": period_start,
        "currency": currency,
        "top": top,
    }
    with connection.cursor() as cursor:
        cursor.execute(_MARGINS, params)
        rows = [_line(row) for row in cursor.fetchall()]
        cursor.execute(_DAYS, {"since": period_start, "until": period_end, "currency": currency})
        days = [_day(row) for row in cursor.fetchall()]
    return FinanceReport(
        period_start=period_start,
        period_end=period_end,
        currency=currency,
        total=next(line for line in rows if line.dimension == "total"),
        lines={d: [line for line in rows if line.dimension == d] for d in DIMENSIONS},
        days=days,
        gaps=_gaps(period_start, period_end, currency),
        generated_at=timezone.now(),
    )


def _gaps(period_start: datetime, period_end: datetime, currency: str) -> Gaps:
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
    )


def month_by_tier(*, period_start: datetime, currency: str) -> dict[str, Any]:
    """The month's report as the console's dashboard shows it: its summary, a table by tier
    with the total, and its gaps, formatted as in the HTML form (the same rules: ratios over
    what was measured, coverage beside them, unpriced usage as unpriced)."""
    report = finance_report(period_start=period_start, currency=currency, top=None)
    return {
        "period": report.period,
        "currency": currency,
        "summary": _summary(report),
        "header": ["tier", *_HEADER[1:]],
        "rows": [_cells(line, currency) for line in [*report.lines["tier"], report.total]],
        "gaps": report.gaps.lines(),
    }


def report_render(*, period_start: datetime, currency: str, fmt: ReportFormat) -> bytes:
    """The report as a file of the given form."""
    if fmt == "csv":
        report = finance_report(period_start=period_start, currency=currency, top=None)
        return report_csv(report).encode()
    report = finance_report(period_start=period_start, currency=currency)
    return report_html(report).encode() if fmt == "html" else report_pdf(report)


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
]


def report_csv(report: FinanceReport) -> str:
    """Every figure unrounded, one row per key and per day, the total first. A key whose
    usage is all unpriced has no revenue and no margin (empty), not zero."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_HEADER)
    for line in _all_lines(report):
        writer.writerow(
            [
                report.period,
                report.currency,
                line.dimension,
                line.key,
                line.label,
                line.tokens,
                line.energy_kwh,
                None if line.unpriced else line.revenue,
                line.energy_cost,
                line.gpu_cost,
                line.cost,
                None if line.unpriced else line.margin,
                line.margin_pct,
                line.cost_per_million_tokens,
                line.tokens_per_kwh,
                line.requests,
                line.measured_requests,
                line.measured_tokens,
                line.costed_tokens,
                line.unpriced_requests,
                line.unpriced_tokens,
                line.measured_token_share,
                line.measured_request_share,
                line.costed_token_share,
                line.joules_per_token,
                line.energy_cost_per_million_tokens,
                line.gpu_cost_per_million_tokens,
            ]
        )
    for day in report.days:
        row: list[object] = [report.period, report.currency, "day", day.day.isoformat()]
        row += [day.day.isoformat(), day.tokens, day.energy_kwh, day.revenue, day.energy_cost]
        row += [day.gpu_cost, day.cost, day.margin]
        writer.writerow(row + [None] * (len(_CSV_HEADER) - len(row)))
    return out.getvalue()


def report_html(report: FinanceReport) -> str:
    """A page with the charts as inline SVG and the tables: nothing loaded from elsewhere."""
    return render_to_string(
        "billing/report.html",
        {
            "report": report,
            "summary": _summary(report),
            "gaps": report.gaps.lines(),
            "charts": [charts.svg(drawing, name=name) for name, drawing in _charts(report)],
            "tables": _tables(report),
        },
    )


def report_pdf(report: FinanceReport) -> bytes:
    """The same summary, charts and tables, printable (A4 landscape)."""
    out = io.BytesIO()
    styles = getSampleStyleSheet()
    styles["Heading2"].keepWithNext = 1
    document = SimpleDocTemplate(
        out,
        pagesize=landscape(A4),
        leftMargin=12 * mm,
        rightMargin=12 * mm,
        topMargin=12 * mm,
        bottomMargin=12 * mm,
        title=_title(report),
    )
    story: list[Any] = [Paragraph(_title(report), styles["Title"])]
    story.append(Paragraph(" · ".join(f"{k}: {v}" for k, v in _summary(report)), styles["Normal"]))
    for gap in report.gaps.lines():
        story.append(Paragraph(gap, styles["Normal"]))
    story.append(Spacer(1, 4 * mm))
    drawings = [drawing for _, drawing in _charts(report)]
    for pair in (drawings[i : i + 2] for i in range(0, len(drawings), 2)):
        story.append(Table([[_scaled(d) for d in pair]], hAlign="LEFT"))
    for title, header, rows in _tables(report):
        story.append(Spacer(1, 4 * mm))
        story.append(Paragraph(title, styles["Heading2"]))
        story.append(_pdf_table([header, *rows]))
    document.build(story)
    return out.getvalue()


def _title(report: FinanceReport) -> str:
    return f"Finance report {report.period} ({report.currency})"


def _summary(report: FinanceReport) -> list[tuple[str, str]]:
    total, currency = report.total, report.currency
    return [
        ("Revenue", _revenue(total, currency)),
        ("Energy cost", _money(total.energy_cost, currency)),
        ("GPU cost", _money(total.gpu_cost, currency)),
        ("Margin", _margin(total, currency)),
        ("Margin % (priced usage)", _percent(total.margin_pct)),
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
Tables = list[tuple[str, list[str], list[list[str]]]]


def _tables(report: FinanceReport) -> Tables:
    tables: Tables = []
    for dimension in DIMENSIONS:
        rows = [_cells(line, report.currency) for line in report.lines[dimension]]
        tables.append((f"By {dimension}", [dimension, *_HEADER[1:]], rows))
    tables.append(("Total", _HEADER, [_cells(report.total, report.currency)]))
    return tables


def _cells(line: Line, currency: str) -> list[str]:
    return [
        line.label,
        f"{line.tokens:,}",
        _quantity(line.energy_kwh),
        _revenue(line, currency),
        _money(line.energy_cost, currency),
        _money(line.gpu_cost, currency),
        _margin(line, currency),
        _percent(line.margin_pct),
        _unit_cost(line.cost_per_million_tokens, currency),
        _count(line.tokens_per_kwh),
        _coverage(line),
        f"{line.unpriced_tokens:,}",
    ]


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
                days=[f"{day.day:%m-%d}" for day in report.days],
                series=[
                    ("revenue", [day.revenue for day in report.days]),
                    ("cost", [day.cost for day in report.days]),
                    ("margin", [day.margin for day in report.days]),
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
    """The lines of keys (a model, an account), not the rest or the unallocated cost."""
    return [line for line in lines if line.key not in (None, UNALLOCATED)]


def _pdf_table(rows: list[list[str]]) -> Table:
    table = Table(rows, repeatRows=1, hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("FONTSIZE", (0, 0), (-1, -1), 7),
                ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
                ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f3f5f8")]),
                ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
            ]
        )
    )
    return table


def _scaled(drawing: Drawing) -> Drawing:
    """Two charts side by side across a landscape A4 page."""
    factor = 0.74
    drawing.scale(factor, factor)
    drawing.width, drawing.height = drawing.width * factor, drawing.height * factor
    return drawing


def _all_lines(report: FinanceReport) -> Iterator[Line]:
    yield report.total
    for dimension in DIMENSIONS:
        yield from report.lines[dimension]


# The columns of report_margins.sql that are counts: PostgreSQL sums bigints to numeric.
_COUNTS = {3, 4, *range(9, 16)}


def _line(row: tuple[Any, ...]) -> Line:
    """A row of report_margins.sql, whose columns are Line's fields in order."""
    values: list[Any] = [int(value) if n in _COUNTS else value for n, value in enumerate(row)]
    return Line(*values)


def _day(row: tuple[Any, ...]) -> Day:
    return Day(
        day=row[0].date(),
        tokens=int(row[1]),
        energy_kwh=row[2],
        revenue=row[3],
        energy_cost=row[4],
        gpu_cost=row[5],
    )


def _month_after(start: datetime) -> datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def _money(amount: Decimal, currency: str) -> str:
    """To the currency's minor unit by the one rounding rule (billing.money)."""
    return f"{from_minor(to_minor(amount, currency), currency):,}"


def _revenue(line: Line, currency: str) -> str:
    """Usage without a price is worth an unknown amount: shown so, never as 0.00."""
    if line.unpriced:
        return "unpriced"
    if line.unpriced_tokens:
        return f"{_money(line.revenue, currency)} + unpriced"
    return _money(line.revenue, currency)


def _margin(line: Line, currency: str) -> str:
    return "unpriced" if line.unpriced else _money(line.margin, currency)


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
    return "n/a" if amount is None else _fixed(amount, 4)


def _percent(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{_fixed(value, 1)}%"


def _quantity(value: Decimal) -> str:
    return _fixed(value, 3)


def _count(value: Decimal | None) -> str:
    return "n/a" if value is None else _fixed(value, 0)


def _fixed(value: Decimal, places: int) -> str:
    """Ratios and quantities, shown to a few places (amounts of money go through _money)."""
    return f"{value:,.{places}f}"
