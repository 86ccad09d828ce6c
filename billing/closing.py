"""Audited invoicing: closing a month (finalising its invoices) and issuing credit notes.

The work is billing.services'; these run it inside a transaction of their own that also
records an audit entry per invoice finalised or credit note issued, so the log holds exactly
what was committed.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import transaction

from audit.services import AnyRequest, audit_change, snapshot
from billing import services as billing
from billing.models import Invoice, InvoiceLine


def invoice_snapshot(invoice: Invoice) -> dict[str, Any]:
    data = snapshot(invoice)
    assert data is not None
    return {**data, "lines": [snapshot(line) for line in invoice.lines.order_by("pk")]}


def invoices_month_close(
    *, actor: object, period_start: datetime, request: AnyRequest | None = None
) -> billing.CloseResult:
    """Invoice and finalise every account of the month holding `period_start`.

    Refused (billing.InvoiceError) while the month or its grace window is open.
    """
    with transaction.atomic():
        month = Invoice.objects.filter(
            kind=Invoice.Kind.INVOICE, period_start=billing.month_of(period_start).start
        )
        before = {invoice.pk: invoice_snapshot(invoice) for invoice in month}
        result = billing.invoices_close(period_start=period_start)
        finalised = month.filter(status=Invoice.Status.FINALISED).prefetch_related("lines")
        for invoice in finalised:
            was = before.get(invoice.pk)
            if was is not None and was["status"] == Invoice.Status.FINALISED:
                continue
            _record(actor, "finalise", invoice, was, request)
    return result


def credit_note_issue(
    *,
    actor: object,
    invoice: Invoice,
    memo: str,
    lines: Sequence[InvoiceLine] | None = None,
    amount_minor: int | None = None,
    request: AnyRequest | None = None,
) -> Invoice:
    """Correct a finalised invoice: whole `lines` of it, or an `amount_minor` credited."""
    with transaction.atomic():
        note = billing.credit_note_issue(
            invoice=invoice, memo=memo, lines=lines, amount_minor=amount_minor
        )
        _record(actor, "credit_note", note, None, request)
    return note


def _record(
    actor: object,
    action: str,
    invoice: Invoice,
    before: dict[str, Any] | None,
    request: AnyRequest | None,
) -> None:
    audit_change(actor, action, invoice, before, invoice_snapshot(invoice), request)
