"""Billing policies a customer would question, declared in docs/billing.md ("Policies") and
held here: the plan fee is prorated to the time an account was open, and a suspended account
pays no fee for its suspension (failed requests: tests/billing/test_late_usage.py)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.models import AuditEntry
from billing.invoicing import Period, open_time
from billing.models import Invoice, InvoiceLine
from billing.services import invoices_close
from customers.models import Account
from customers.services import account_status_set
from tests.billing.factories import MONTH, NEXT_MONTH, BookSpec, account_make, book_create

HOURS = 31 * 24  # March
MARCH = Period(MONTH, NEXT_MONTH)


@given(
    created=st.integers(-48, HOURS + 48),
    changes=st.lists(st.tuples(st.integers(-200, HOURS + 10), st.booleans()), max_size=6),
    suspended_now=st.booleans(),
)
def test_the_open_time_counts_every_hour_the_account_existed_and_was_not_suspended(
    created: int, changes: list[tuple[int, bool]], suspended_now: bool
) -> None:
    at = [(MONTH + timedelta(hours=h), s) for h, s in sorted(changes)]
    opened = open_time(MARCH, MONTH + timedelta(hours=created), at, suspended_now)

    def suspended(hour: int) -> bool:  # the state during [hour, hour + 1)
        before = [s for h, s in sorted(changes) if h <= hour]
        if before:
            return before[-1]
        return (not sorted(changes)[0][1]) if changes else suspended_now

    hours = sum(1 for h in range(HOURS) if h >= created and not suspended(h))
    assert opened.microseconds == hours * 3_600_000_000


@pytest.mark.django_db
def test_an_account_opened_mid_month_pays_the_fee_for_the_seconds_it_existed() -> None:
    book_create(BookSpec(MONTH - timedelta(days=40), [], {"premium": (Decimal(31), 0)}))
    account = account_make("premium")
    opened = MONTH + timedelta(days=4, hours=12, seconds=1)  # 5 March, 12:00:01
    Account.objects.filter(pk=account.pk).update(created_at=opened)

    invoices_close(period_start=MONTH, now=NEXT_MONTH + timedelta(hours=3))

    fee = Invoice.objects.get(account=account).lines.get(item=InvoiceLine.Item.PLAN_FEE)
    seconds = (NEXT_MONTH - opened).total_seconds()
    assert fee.amount == (Decimal(31) * Decimal(int(seconds)) / Decimal(31 * 86400)).quantize(
        Decimal("1e-12")
    )
    assert (fee.usage_from, fee.usage_to, fee.unit_price) == (opened, NEXT_MONTH, Decimal(31))
    assert fee.amount_minor == 2650  # 26.499988... days of 31


@pytest.mark.django_db
def test_a_suspended_account_pays_no_fee_for_its_suspension() -> None:
    book_create(BookSpec(MONTH - timedelta(days=40), [], {"premium": (Decimal(31), 0)}))
    half, whole, active = (account_make("premium") for _ in range(3))
    for account, when in ((half, MONTH + timedelta(days=10)), (whole, MONTH - timedelta(days=3))):
        account_status_set(account=account, status="suspended")
        AuditEntry.objects.filter(object_id=str(account.pk), action="suspend").update(at=when)
    account_status_set(account=half, status="active")
    AuditEntry.objects.filter(object_id=str(half.pk), action="activate").update(
        at=MONTH + timedelta(days=20)
    )

    invoices_close(period_start=MONTH, now=NEXT_MONTH + timedelta(hours=3))

    def fee(account: Account) -> int | None:
        invoice = Invoice.objects.filter(account=account).first()
        return invoice.total_minor if invoice else None

    assert (fee(active), fee(half), fee(whole)) == (3100, 2100, None)
