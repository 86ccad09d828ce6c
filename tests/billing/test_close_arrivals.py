"""A close and the meter at the same moment: a record whose insert is still committing when the
month closes is billed once, by this close or the next, never lost between them."""

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction

from billing.models import Invoice, InvoiceLine
from billing.seal import seal_lifted
from billing.services import invoices_close
from customers.models import Account
from metering.models import UsageRecord
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
CLOSE = NEXT_MONTH + timedelta(hours=3)


@pytest.fixture
def account() -> Iterator[Account]:
    book_create(
        BookSpec(MONTH - timedelta(days=40), [PriceSpec("premium", "*", *[Decimal(1)] * 3)])
    )
    yield account_make("premium")
    with seal_lifted():
        Invoice.objects.all().delete()
    UsageRecord.objects.all().delete()


def test_a_record_committing_while_the_month_closes_is_billed_once(account: Account) -> None:
    record = usage(MONTH + timedelta(days=30), account_id=account.pk, prompt=777, completion=0)
    inserted = threading.Event()

    def meter() -> None:  # stores the record, then takes a while to commit
        try:
            with transaction.atomic():
                usage_write([record])
                inserted.set()
                time.sleep(1.0)
        finally:
            connection.close()

    writer = threading.Thread(target=meter)
    writer.start()
    assert inserted.wait(10)
    invoices_close(period_start=MONTH, now=CLOSE)
    writer.join()
    invoices_close(period_start=NEXT_MONTH, now=CLOSE + timedelta(days=31))

    billed = InvoiceLine.objects.filter(
        invoice__account=account, item=InvoiceLine.Item.INPUT
    ).values_list("invoice__period_start", "quantity")
    assert list(billed) == [(MONTH, 777)]
