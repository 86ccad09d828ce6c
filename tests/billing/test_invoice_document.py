"""The invoice a customer downloads: the month's invoice, a credit note and the estimate of the
month in progress, as a printable page and a PDF, lines grouped by project with subtotals."""

import re
from datetime import timedelta
from decimal import Decimal
from html import unescape

import pytest

from billing.invoice_document import (
    ESTIMATE_NOTE,
    invoice_document,
    invoice_filename,
    invoice_html,
    invoice_pdf,
)
from billing.models import Invoice
from billing.services import credit_note_issue, invoice_preview, invoices_close
from customers.models import Account, Project
from customers.services import DEFAULT_PROJECT, project_create, project_default
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
    usage,
    usage_write,
)

pytestmark = pytest.mark.django_db
CLOSE = NEXT_MONTH + timedelta(hours=3)
LLAMA = PriceSpec("premium", "llama", Decimal(3), Decimal("0.3"), Decimal(15))


@pytest.fixture
def account() -> Account:
    """Two projects' usage in MONTH: the default's 1.20 + 1.50, rag's 0.30 + 3.00; 20 a month."""
    book_create(BookSpec(MONTH - timedelta(days=40), [LLAMA], {"premium": (Decimal(20), 0)}))
    account = account_make("premium")
    Account.objects.filter(pk=account.pk).update(name="Acme & Co <Labs>")
    rag = project_create(account=account, name="rag")
    default = project_default(account=account)
    usage_write(
        [
            usage(
                MONTH + timedelta(days=1),
                account_id=account.pk,
                project_id=default.pk,
                prompt=400_000,
                completion=100_000,
            ),
            usage(
                MONTH + timedelta(days=2),
                account_id=account.pk,
                project_id=rag.pk,
                prompt=100_000,
                completion=200_000,
            ),
        ]
    )
    return account


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def test_the_invoice_page_groups_lines_by_project_with_subtotals(account: Account) -> None:
    invoices_close(period_start=MONTH, now=CLOSE)
    invoice = Invoice.objects.get(account=account)

    page = invoice_html(invoice)
    text = text_of(page)
    assert page.startswith("<!doctype html>") and "@media print" in page
    assert f"Invoice {invoice.number}" in text
    assert "Billed to Acme & Co <Labs>" in text  # escaped in the page, read back as written
    assert "&lt;Labs&gt;" in page
    assert "Period 2025-03-01 to 2025-03-31" in text
    assert f"Project: {DEFAULT_PROJECT} " in text
    assert "Subtotal rag $3.30" in text
    assert "Subtotal Account $20.00" in text
    assert "Output tokens: llama / premium 200,000 $15.00 per 1M $3.00" in text
    assert text.strip().endswith("Total $26.00")
    assert "not final" not in text


def test_subtotals_add_up_to_the_total(account: Account) -> None:
    invoices_close(period_start=MONTH, now=CLOSE)
    invoice = Invoice.objects.get(account=account)
    doc = invoice_document(invoice)
    assert [g.subtotal_minor for g in doc.groups] == [270, 330, 2000]
    assert sum(g.subtotal_minor for g in doc.groups) == invoice.total_minor == 2600


def test_the_pdf_is_a_pdf_of_the_same_invoice(account: Account) -> None:
    invoices_close(period_start=MONTH, now=CLOSE)
    invoice = Invoice.objects.get(account=account)
    pdf = invoice_pdf(invoice)
    assert pdf.startswith(b"%PDF")
    assert invoice_filename(invoice, "pdf") == f"{invoice.number}.pdf"


def test_a_credit_note_says_what_it_corrects(account: Account) -> None:
    invoices_close(period_start=MONTH, now=CLOSE)
    invoice = Invoice.objects.get(account=account)
    note = credit_note_issue(invoice=invoice, memo="Outage on the 2nd", amount_minor=500)
    text = text_of(invoice_html(note))
    assert f"Credit note {note.number}" in text
    assert f"Corrects {invoice.number}" in text
    assert "Total -$5.00" in text and "Outage on the 2nd" in text
    assert invoice_pdf(note).startswith(b"%PDF")


def test_the_month_in_progress_is_an_estimate_not_final(account: Account) -> None:
    draft = invoice_preview(account=account, now=MONTH + timedelta(days=20))
    text = text_of(invoice_html(draft))
    assert "Estimate" in text and ESTIMATE_NOTE in text
    assert "Subtotal rag $3.30" in text
    assert invoice_pdf(draft).startswith(b"%PDF")
    assert invoice_filename(draft, "html") == "estimate-2025-03-acme-co-labs.html"


def test_a_stored_draft_says_it_is_not_final(account: Account) -> None:
    invoice = Invoice.objects.create(
        account=account, period_start=MONTH, period_end=NEXT_MONTH, total_minor=0
    )
    assert "Draft, not final" in text_of(invoice_html(invoice))
    assert invoice_filename(invoice, "pdf") == f"invoice-2025-03-draft-{invoice.pk}.pdf"


def test_an_archived_projects_lines_keep_its_name(account: Account) -> None:
    invoices_close(period_start=MONTH, now=CLOSE)
    Project.objects.filter(name="rag").update(archived_at=CLOSE)
    invoice = Invoice.objects.get(account=account)
    assert "Project: rag" in text_of(invoice_html(invoice))
