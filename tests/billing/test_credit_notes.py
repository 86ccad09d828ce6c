"""Credit notes issued at the same moment: a line is reversed once, whoever asks."""

import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction

from billing.models import Invoice
from billing.seal import seal_lifted
from billing.services import InvoiceError, credit_note_issue, invoices_close
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

pytestmark = pytest.mark.django_db(transaction=True)
LLAMA = PriceSpec("premium", "llama", Decimal(3), Decimal("0.3"), Decimal(15))


@pytest.fixture
def invoice() -> Iterator[Invoice]:
    # A plan fee, so the invoice total alone would let the line be credited five times.
    book_create(BookSpec(MONTH - timedelta(days=40), [LLAMA], {"premium": (Decimal(100), 0)}))
    account = account_make("premium")
    usage_write([usage(MONTH + timedelta(days=1), account_id=account.pk, prompt=8_000_000)])
    invoices_close(period_start=MONTH, now=NEXT_MONTH + timedelta(hours=3))
    yield Invoice.objects.get(account=account)
    with seal_lifted():
        Invoice.objects.exclude(corrects=None).delete()
        Invoice.objects.all().delete()


def test_two_notes_issued_at_once_reverse_a_line_once(invoice: Invoice) -> None:
    line = invoice.lines.get(item="input")
    start = threading.Barrier(4)
    outcomes: list[str] = []

    def issue() -> None:
        try:
            start.wait()
            credit_note_issue(invoice=invoice, memo="refund", lines=[line])
            outcomes.append("issued")
        except InvoiceError as refused:
            outcomes.append(str(refused))
        finally:
            connection.close()

    threads = [threading.Thread(target=issue) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("issued") == 1, outcomes
    assert all("credited already" in o for o in outcomes if o != "issued")
    notes = Invoice.objects.filter(corrects=invoice)
    assert [n.total_minor for n in notes] == [-line.amount_minor] == [-2400]
    with transaction.atomic():
        assert invoice.total_minor + sum(n.total_minor for n in notes) == 10000
