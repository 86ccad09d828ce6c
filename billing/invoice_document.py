"""The invoice as a customer reads it: a printable HTML page and a PDF of one stored invoice
(draft, finalised or credit note) or of the month in progress (a `Draft` from
billing.services.invoice_preview, marked as an estimate, not final).

Lines are grouped by project with a subtotal each where they name more than one project (the
plan fee and amounts credited belong to the account, shown last); otherwise one list, as
before projects. Amounts are the lines' own minor units (billing.money rounded them once), so
the subtotals add up to the total exactly.
"""

import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from html import escape
from typing import Any

from django.template.loader import render_to_string
from django.utils.text import slugify
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing.invoicing import Draft, Line
from billing.models import Invoice, InvoiceLine
from billing.money import PRICE_PLACES, minor_exponent, minor_text, money_text
from customers.models import Account, Project

Billable = Invoice | Draft

ISSUER = "Token Factory"
ESTIMATE_NOTE = (
    "Estimate, not final: the usage of the month so far. The invoice is issued when the month "
    "closes and may differ (usage still to come, late usage, included tokens)."
)
DRAFT_NOTE = "Draft, not final: this invoice is finalised and numbered when its month closes."
# Where the lines of no project go: the plan fee, amounts credited.
ACCOUNT_GROUP = "Account"
_ITEMS = {
    InvoiceLine.Item.INPUT: "Input tokens",
    InvoiceLine.Item.CACHED_INPUT: "Cached input tokens",
    InvoiceLine.Item.OUTPUT: "Output tokens",
    InvoiceLine.Item.REASONING: "Reasoning tokens",
    InvoiceLine.Item.REQUEST_FEE: "Requests",
    InvoiceLine.Item.PLAN_FEE: "Plan fee",
    InvoiceLine.Item.INCLUDED: "Included tokens",
    InvoiceLine.Item.CREDIT: "Credit",
    InvoiceLine.Item.CREDITS_APPLIED: "Prepaid credits applied",
}
_PER_MILLION = {"input", "cached_input", "output", "reasoning", "included"}


@dataclass(frozen=True, slots=True)
class DocumentLine:
    description: str
    quantity: str
    unit_price: str
    amount: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class Group:
    """The lines of one project (name None: all lines, ungrouped) and their subtotal."""

    name: str | None
    lines: list[DocumentLine]
    subtotal_minor: int
    subtotal: str


@dataclass(frozen=True)
class InvoiceDocument:
    title: str
    number: str
    status: str
    note: str
    account: str
    period_start: datetime
    period_end: datetime
    issued: datetime | None
    currency: str
    corrects: str
    memo: str
    groups: list[Group]
    total_minor: int
    total: str

    @property
    def grouped(self) -> bool:
        return len(self.groups) > 1 or any(g.name is not None for g in self.groups)

    @property
    def period(self) -> str:
        """The usage period, end inclusive as people write it (the end is the next month's
        first instant)."""
        last = self.period_end - timedelta(microseconds=1)
        return f"{self.period_start:%Y-%m-%d} to {last:%Y-%m-%d}"


def invoice_document(x: Billable) -> InvoiceDocument:
    """What the HTML and the PDF show of an invoice, credit note or the month's estimate."""
    if isinstance(x, Draft):
        return _document(
            title="Estimate",
            number="",
            status="estimate",
            note=ESTIMATE_NOTE,
            account_id=x.account_id,
            period=(x.period.start, x.period.end),
            issued=None,
            currency=x.currency,
            lines=[_line_of(line) for line in x.lines],
            total_minor=x.total_minor,
        )
    lines = x.lines.order_by("pk")
    corrects = (x.corrects.number or "") if x.corrects is not None else ""
    credit_note = x.kind == Invoice.Kind.CREDIT_NOTE
    finalised = x.status == Invoice.Status.FINALISED
    return _document(
        title="Credit note" if credit_note else "Invoice",
        number=x.number or "",
        status=x.status,
        note="" if finalised else DRAFT_NOTE,
        account_id=x.account_id,
        period=(x.period_start, x.period_end),
        issued=x.finalised_at,
        currency=x.currency,
        lines=[_line_of(line) for line in lines],
        total_minor=x.total_minor,
        corrects=corrects,
        memo=x.memo,
    )


def invoice_filename(x: Billable, ext: str) -> str:
    """`TF-2026-000042.pdf` for a numbered document; `invoice-2026-11-draft-7.pdf`,
    `estimate-2026-12-acme.pdf` otherwise (safe in a Content-Disposition header)."""
    if isinstance(x, Draft):
        account = Account.objects.filter(pk=x.account_id).values_list("name", flat=True).first()
        return f"estimate-{x.period.start:%Y-%m}-{slugify(account or str(x.account_id))}.{ext}"
    if x.number:
        return f"{slugify(x.number).upper()}.{ext}"
    kind = "credit-note" if x.kind == Invoice.Kind.CREDIT_NOTE else "invoice"
    return f"{kind}-{x.period_start:%Y-%m}-draft-{x.pk}.{ext}"


def invoice_html(x: Billable) -> str:
    """A complete page, styled inline and printable: nothing loaded from elsewhere."""
    return render_to_string("billing/invoice.html", {"doc": invoice_document(x)})


def invoice_pdf(x: Billable) -> bytes:
    """The same document as a PDF (A4 portrait)."""
    doc = invoice_document(x)
    out = io.BytesIO()
    styles = getSampleStyleSheet()
    pdf = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=16 * mm,
        rightMargin=16 * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
        title=f"{doc.title} {doc.number}".strip(),
        author=ISSUER,
    )
    heading = f"{doc.title} {doc.number}".strip()
    story: list[Any] = [Paragraph(escape(heading), styles["Title"])]
    if doc.note:
        story.append(Paragraph(f"<b>{escape(doc.note)}</b>", styles["Normal"]))
        story.append(Spacer(1, 3 * mm))
    story.append(_pdf_facts(doc, pdf.width))
    for group in doc.groups:
        story.append(Spacer(1, 5 * mm))
        if group.name is not None:
            story.append(Paragraph(escape(f"Project: {group.name}"), styles["Heading3"]))
        story.append(_pdf_lines(group, pdf.width, subtotal=doc.grouped))
    story.append(Spacer(1, 5 * mm))
    total = Table([["Total", doc.total]], colWidths=[pdf.width * 0.8, pdf.width * 0.2])
    total.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (-1, -1), 11),
                ("ALIGN", (1, 0), (1, 0), "RIGHT"),
                ("LINEABOVE", (0, 0), (-1, 0), 1, colors.black),
            ]
        )
    )
    story.append(total)
    if doc.memo:
        story.append(Spacer(1, 4 * mm))
        story.append(Paragraph(escape(doc.memo), styles["Normal"]))
    pdf.build(story)
    return out.getvalue()


def _document(
    *,
    title: str,
    number: str,
    status: str,
    note: str,
    account_id: int,
    period: tuple[datetime, datetime],
    issued: datetime | None,
    currency: str,
    lines: list[Line],
    total_minor: int,
    corrects: str = "",
    memo: str = "",
) -> InvoiceDocument:
    account = Account.objects.filter(pk=account_id).values_list("name", flat=True).first()
    return InvoiceDocument(
        title=title,
        number=number,
        status=status,
        note=note,
        account=account or f"account #{account_id}",
        period_start=period[0],
        period_end=period[1],
        issued=issued,
        currency=currency,
        corrects=corrects,
        memo=memo,
        groups=_groups(lines, currency, period[0]),
        total_minor=total_minor,
        total=minor_text(total_minor, currency),
    )


def _line_of(line: Line | InvoiceLine) -> Line:
    """A stored line as the draft's dataclass: one shape for both."""
    if isinstance(line, Line):
        return line
    return Line(
        line.item,
        line.tier,
        line.model,
        line.price_book_id,
        line.quantity,
        line.unit_price,
        line.amount,
        line.usage_from,
        line.usage_to,
        line.amount_minor,
        line.project_id,
    )


def _groups(lines: list[Line], currency: str, period_start: datetime) -> list[Group]:
    """One group per project, the default project first, then by name, the account's own
    lines last; one unnamed group where the lines name fewer than two projects."""
    projects = {line.project_id for line in lines} - {None}
    if len(projects) < 2:
        return [_group(None, lines, currency, period_start)]
    names = {p.pk: p for p in Project.objects.filter(pk__in=projects)}
    order = sorted(
        projects,
        key=lambda pk: (
            (not names[pk].is_default, names[pk].name, pk) if pk in names else (True, "", pk)
        ),
    )
    groups = [
        _group(
            names[pk].name if pk in names else f"project #{pk}",
            [line for line in lines if line.project_id == pk],
            currency,
            period_start,
        )
        for pk in order
    ]
    own = [line for line in lines if line.project_id is None]
    if own:
        groups.append(_group(ACCOUNT_GROUP, own, currency, period_start))
    return groups


def _group(name: str | None, lines: list[Line], currency: str, period_start: datetime) -> Group:
    subtotal = sum(line.amount_minor for line in lines)
    return Group(
        name=name,
        lines=[_shown(line, currency, period_start) for line in lines],
        subtotal_minor=subtotal,
        subtotal=minor_text(subtotal, currency),
    )


def _shown(line: Line, currency: str, period_start: datetime) -> DocumentLine:
    label = _ITEMS.get(InvoiceLine.Item(line.item), line.item)
    what = " / ".join(part for part in (line.model, line.tier) if part)
    description = f"{label}: {what}" if what else label
    if line.usage_from < period_start and line.item not in (
        "plan_fee",
        "credit",
        "credits_applied",
    ):
        description += f" (usage of {line.usage_from:%Y-%m}, arrived late)"
    per = " per 1M" if line.item in _PER_MILLION else ""
    return DocumentLine(
        description=description,
        quantity=f"{line.quantity:,}",
        unit_price=_price(line.unit_price, currency) + per,
        amount=minor_text(line.amount_minor, currency),
        amount_minor=line.amount_minor,
    )


def _price(price: Decimal, currency: str) -> str:
    """A unit price with the places it has (up to 6), never fewer than the minor unit's."""
    places = max(minor_exponent(currency), -price.normalize().as_tuple().exponent)  # type: ignore[operator]
    return money_text(price, currency, places=min(places, PRICE_PLACES))


def _pdf_facts(doc: InvoiceDocument, width: float) -> Table:
    facts = [
        ["From", ISSUER],
        ["Billed to", doc.account],
        ["Period", doc.period],
        ["Currency", doc.currency],
    ]
    if doc.issued is not None:
        facts.append(["Issued", f"{doc.issued:%Y-%m-%d}"])
    if doc.corrects:
        facts.append(["Corrects", doc.corrects])
    table = Table(facts, colWidths=[width * 0.2, width * 0.8], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (0, -1), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (-1, -1), 9),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
                ("TOPPADDING", (0, 0), (-1, -1), 1),
            ]
        )
    )
    return table


def _pdf_lines(group: Group, width: float, *, subtotal: bool) -> Table:
    rows: list[list[str]] = [["Description", "Quantity", "Unit price", "Amount"]]
    rows += [[li.description, li.quantity, li.unit_price, li.amount] for li in group.lines]
    if subtotal:
        rows.append(["Subtotal", "", "", group.subtotal])
    table = Table(
        rows, colWidths=[width * 0.5, width * 0.15, width * 0.18, width * 0.17], repeatRows=1
    )
    style = [
        ("FONTSIZE", (0, 0), (-1, -1), 8),
        ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
        ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
        ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f3f5f8")]),
    ]
    if subtotal:
        style += [
            ("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold"),
            ("LINEABOVE", (0, -1), (-1, -1), 0.5, colors.grey),
            ("BACKGROUND", (0, -1), (-1, -1), colors.white),
        ]
    table.setStyle(TableStyle(style))
    return table
