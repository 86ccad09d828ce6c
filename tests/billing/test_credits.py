"""Prepaid credit as finance and the customer see it: an append-only ledger, grants made once
per payment, usage drawn from grants in order, expiries, the gateway's counter kept equal to
the ledger (once per movement, rebuilt after Redis lost it), and invoices that reconcile."""

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.db import DatabaseError, connection, transaction
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from billing.budgets import budget_alerts_record
from billing.credits import CreditError, credit_correct, credit_grant, credit_refund, credits_sync
from billing.drawdown import credits_drawdown_run
from billing.models import BudgetAlert, CreditEntry, CreditGrant, CreditSettings, Invoice
from billing.money import to_minor
from billing.rollups import rollups_run
from billing.selectors import credit_balance, credit_remaining
from billing.services import invoices_close
from customers.models import Account, Budget, WebhookEndpoint, WebhookEvent
from metering.credits import CREDIT_EPOCH, credit_keys
from metering.redis_scripts import SCRIPTS, run
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
    rolled_back,
    usage,
    usage_write,
)

pytestmark = [pytest.mark.django_db, pytest.mark.redis_cluster]
# Output at 1 a million tokens, no input price: a request of N completion tokens costs N µ.
OUTPUT_PER_MILLION = Decimal(1)


@pytest.fixture(autouse=True)
def book() -> None:
    book_create(
        BookSpec(
            MONTH - timedelta(days=60),
            [PriceSpec("premium", "*", Decimal(0), Decimal(0), OUTPUT_PER_MILLION)],
        )
    )


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    redis_client.flushdb()
    redis_client.set(CREDIT_EPOCH, "test")
    return redis_client


def prepaid() -> Account:
    account = account_make()
    Account.objects.filter(pk=account.pk).update(billing_mode=Account.Billing.PREPAID)
    account.refresh_from_db()
    return account


def grant(account: Account, amount: str, **options: Any) -> CreditGrant:
    options.setdefault("effective_from", MONTH - timedelta(days=1))
    return credit_grant(
        account=account, amount=Decimal(amount), source="promotion", actor="staff", **options
    )


def spend(account: Account, hour: int, completion: int) -> None:
    """Usage costing `completion` µ in the MONTH's `hour`."""
    at = MONTH + timedelta(hours=hour, minutes=5)
    usage_write([usage(at, account_id=account.pk, prompt=0, completion=completion)])


def draw(through_hour: int) -> None:
    rollups_run(now=MONTH + timedelta(hours=through_hour), wait=True)
    credits_drawdown_run(wait=True)


def counter(client: redis.Redis, account: Account) -> int:
    return int(client.get(credit_keys(account.pk)[0]) or 0)


def drawn(account: Account) -> list[tuple[int | None, int, Decimal]]:
    """(grant, hour, amount) of each usage draw-down."""
    rows = CreditEntry.objects.filter(account=account, kind="usage").order_by("period", "pk")
    return [(e.grant_id, int((e.period - MONTH) / timedelta(hours=1)), e.amount) for e in rows]


def test_the_database_refuses_to_change_or_delete_a_ledger_entry_or_a_grant() -> None:
    account = prepaid()
    granted = grant(account, "5")
    entry = CreditEntry.objects.get(grant=granted)
    for sql, args in (
        ("UPDATE billing_creditentry SET amount = 50 WHERE id = %s", [entry.pk]),
        ("DELETE FROM billing_creditentry WHERE id = %s", [entry.pk]),
        ("UPDATE billing_creditgrant SET amount = 50 WHERE id = %s", [granted.pk]),
        ("DELETE FROM billing_creditgrant WHERE id = %s", [granted.pk]),
    ):
        with (
            pytest.raises(DatabaseError, match="cannot be changed"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, args)
    # Marking it applied to Redis is the one change, once.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE billing_creditentry SET applied_at = now() WHERE id = %s", [entry.pk]
        )
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE billing_creditentry SET applied_at = now() WHERE id = %s", [entry.pk]
        )
    assert credit_balance(account) == Decimal(5)


def test_a_payment_reference_grants_once_however_often_it_arrives() -> None:
    account = prepaid()
    first = grant(account, "10", reference="cs_test_1")
    again = grant(account, "10", reference="cs_test_1")
    assert again.pk == first.pk
    assert CreditEntry.objects.filter(account=account).count() == 1
    assert credit_balance(account) == Decimal(10)
    with pytest.raises(CreditError, match="another account"):
        grant(prepaid(), "10", reference="cs_test_1")


def test_refunds_and_corrections_never_take_a_grant_below_zero() -> None:
    account = prepaid()
    granted = grant(account, "10")
    credit_refund(grant=granted, amount=Decimal("4"), actor="staff")
    credit_correct(grant=granted, amount=Decimal("-1.5"), actor="staff", memo="typo")
    with pytest.raises(CreditError, match="at most"):
        credit_refund(grant=granted, amount=Decimal("5"), actor="staff")
    with pytest.raises(CreditError, match="memo"):
        credit_correct(grant=granted, amount=Decimal("1"), actor="staff", memo="")
    assert credit_remaining(grant=granted) == Decimal("4.5")
    kinds = list(CreditEntry.objects.filter(grant=granted).values_list("kind", "amount"))
    assert kinds == [("grant", 10), ("refund", -4), ("correction", Decimal("-1.5"))]


def test_each_movement_reaches_the_gateways_counter_exactly_once(client: redis.Redis) -> None:
    account = prepaid()
    granted = grant(account, "1.25")
    credit_refund(grant=granted, amount=Decimal("0.25"), actor="staff")
    assert credits_sync(client=client) == 2
    assert credits_sync(client=client) == 0
    assert counter(client, account) == 1_000_000_000_000
    # Sent again (a lost reply, the sweep): the applied set makes it change nothing.
    entry = CreditEntry.objects.filter(grant=granted).first()
    assert entry is not None
    keys = credit_keys(account.pk)
    run(client, SCRIPTS["credit_apply"], keys, [entry.pk, "1250000000000"])
    assert counter(client, account) == 1_000_000_000_000


def test_a_grant_reaches_the_counter_when_it_takes_effect(client: redis.Redis) -> None:
    account = prepaid()
    later = grant(account, "3", effective_from=MONTH + timedelta(days=5000))
    assert credits_sync(client=client) == 0
    assert counter(client, account) == 0
    assert credit_balance(account) == 0
    assert credit_balance(account, now=later.effective_from) == 3


def test_usage_draws_grants_soonest_expiry_then_priority_then_oldest() -> None:
    account = prepaid()
    oldest = grant(account, "0.000100")
    high = grant(account, "0.000100", priority=5)
    expiring = grant(account, "0.000100", expires_at=MONTH + timedelta(days=20))
    spend(account, 0, 150)  # 150 µ: the expiring grant, then half the high-priority one
    spend(account, 1, 100)  # the rest of the high one, then the oldest
    spend(account, 2, 200)  # the oldest's rest, then beyond every grant
    draw(3)
    micro = Decimal("0.000001")
    assert drawn(account) == [
        (expiring.pk, 0, -100 * micro),
        (high.pk, 0, -50 * micro),
        (high.pk, 1, -50 * micro),
        (oldest.pk, 1, -50 * micro),
        (oldest.pk, 2, -50 * micro),
        (None, 2, -150 * micro),
    ]
    assert credit_balance(account) == 0
    before = drawn(account)
    credits_drawdown_run(wait=True)
    assert drawn(account) == before  # run again: the same ledger


def test_late_usage_of_an_hour_drawn_already_draws_the_difference() -> None:
    account = prepaid()
    granted = grant(account, "1")
    spend(account, 0, 100)
    draw(2)
    spend(account, 0, 40)  # arrives late, within the grace window
    draw(2)
    assert [a for *_, a in drawn(account)] == [Decimal("-0.0001"), Decimal("-0.00004")]
    assert credit_remaining(grant=granted) == Decimal("0.99986")


def test_a_grant_not_yet_in_effect_or_expired_is_skipped_and_its_remainder_expires(
    client: redis.Redis,
) -> None:
    account = prepaid()
    expired = grant(account, "0.001", expires_at=MONTH + timedelta(hours=1))
    future = grant(account, "0.001", effective_from=MONTH + timedelta(hours=5))
    spend(account, 0, 300)  # before expiry: drawn from the expiring grant
    spend(account, 2, 200)  # after expiry, before the other starts: from nothing
    spend(account, 6, 100)  # the later grant
    credits_sync(client=client)
    draw(7)
    assert drawn(account) == [
        (expired.pk, 0, Decimal("-0.0003")),
        (None, 2, Decimal("-0.0002")),
        (future.pk, 6, Decimal("-0.0001")),
    ]
    expiry = CreditEntry.objects.get(kind="expiry")
    assert (expiry.grant_id, expiry.amount) == (expired.pk, Decimal("-0.0007"))
    assert credit_remaining(grant=expired) == 0
    credits_drawdown_run(wait=True)
    assert CreditEntry.objects.filter(kind="expiry").count() == 1
    credits_sync(client=client)  # the expiry leaves the counter too
    assert counter(client, account) == (1_000_000_000 + 1_000_000_000 - 700_000_000)


def test_a_redis_that_lost_its_data_is_rebuilt_from_the_ledger(client: redis.Redis) -> None:
    account = prepaid()
    granted = grant(account, "0.01")
    credit_refund(grant=granted, amount=Decimal("0.001"), actor="staff")
    spend(account, 0, 1000)  # drawn down
    draw(2)
    spend(account, 5, 500)  # not drawn yet: the gateway took it off at settle
    client.flushdb()  # Redis restarted empty
    credits_sync(client=client)
    assert client.exists(CREDIT_EPOCH)
    # 0.01 - 0.001 - 0.001 drawn - 0.0005 undrawn
    assert counter(client, account) == 7_500_000_000
    applied = {int(pk) for pk in client.smembers(credit_keys(account.pk)[1])}
    assert applied == set(
        CreditEntry.objects.filter(account=account)
        .exclude(kind="usage")
        .values_list("pk", flat=True)
    )
    credits_sync(client=client)  # nothing counted twice
    assert counter(client, account) == 7_500_000_000


def close(now_days: int = 40) -> Invoice:
    invoices_close(period_start=MONTH, now=MONTH + timedelta(days=now_days))
    return Invoice.objects.get(period_start=MONTH, kind="invoice")


def test_an_invoice_covered_by_credits_is_zero_and_shows_the_credits_applied() -> None:
    account = prepaid()
    grant(account, "1")
    spend(account, 0, 300_000)  # 0.30
    spend(account, 30, 250_000)  # 0.25
    rollups_run(now=NEXT_MONTH + timedelta(hours=3), wait=True)
    invoice = close()
    lines = {line.item: line for line in invoice.lines.all()}
    assert lines["output"].amount_minor == 55
    assert (lines["credits_applied"].amount, lines["credits_applied"].amount_minor) == (
        Decimal("-0.55"),
        -55,
    )
    assert invoice.total_minor == 0


@hsettings(max_examples=12, deadline=None)
@given(
    costs=st.lists(st.integers(min_value=1, max_value=2_000_000), min_size=1, max_size=8),
    grants=st.lists(st.integers(min_value=1, max_value=3_000_000), min_size=0, max_size=3),
)
def test_usage_less_credits_applied_is_the_amount_due_to_the_cent(
    costs: list[int], grants: list[int]
) -> None:
    with rolled_back():
        account = prepaid()
        for micro in grants:
            grant(account, str(Decimal(micro) / 1_000_000))
        for hour, cost in enumerate(costs):
            spend(account, hour * 7, cost)
        rollups_run(now=NEXT_MONTH + timedelta(hours=3), wait=True)
        invoice = close()
        lines = list(invoice.lines.all())
        usage_amount = sum(line.amount for line in lines if line.item == "output")
        applied = [line for line in lines if line.item == "credits_applied"]
        drawn_total = -sum(
            CreditEntry.objects.filter(
                account=account, kind="usage", grant__isnull=False
            ).values_list("amount", flat=True),
            Decimal(0),
        )
        assert usage_amount == Decimal(sum(costs)) / 1_000_000
        assert drawn_total == min(usage_amount, Decimal(sum(grants)) / 1_000_000)
        assert sum(-line.amount for line in applied) == drawn_total
        assert invoice.total_minor == to_minor(usage_amount - drawn_total, "USD")
        assert invoice.total_minor == sum(line.amount_minor for line in lines)
        assert invoice.total_minor >= 0


def test_draw_downs_after_a_close_go_on_the_next_invoice_once() -> None:
    account = prepaid()
    grant(account, "5")
    spend(account, 0, 1_000_000)
    rollups_run(now=MONTH + timedelta(hours=1), wait=True)  # the rest rolled up after the close
    spend(account, 24 * 31 - 1, 2_000_000)  # the month's last hour
    first = close()
    applied = first.lines.get(item="credits_applied").amount
    assert applied == Decimal(-1)
    rollups_run(now=NEXT_MONTH + timedelta(days=1), wait=True)
    credits_drawdown_run(wait=True)
    invoices_close(period_start=NEXT_MONTH, now=NEXT_MONTH + timedelta(days=40))
    second = Invoice.objects.get(period_start=NEXT_MONTH, kind="invoice")
    assert second.lines.get(item="credits_applied").amount == Decimal(-2)


def test_balance_low_and_exhausted_are_told_once_per_crossing(client: redis.Redis) -> None:
    from billing.credits import credits_balance_watch

    account = prepaid()
    CreditSettings.objects.create(account=account, low_balance_threshold=Decimal("5"))
    balance = credit_keys(account.pk)[0]
    client.set(balance, 10 * 10**12)
    assert credits_balance_watch() == 0
    client.set(balance, 4 * 10**12)
    assert credits_balance_watch() == 1
    assert credits_balance_watch() == 0
    client.set(balance, 0)
    assert credits_balance_watch() == 1
    client.set(balance, 20 * 10**12)  # topped up
    assert credits_balance_watch() == 0
    client.set(balance, 1 * 10**12)
    assert credits_balance_watch() == 1
    events = WebhookEvent.objects.filter(account=account).order_by("pk")
    assert [e.type for e in events] == [
        "credits.balance_low",
        "credits.exhausted",
        "credits.balance_low",
    ]
    assert events[0].data["balance"] == "4.000000000000"


def test_a_budget_threshold_and_a_finalised_invoice_are_told_to_the_account() -> None:
    account = prepaid()
    WebhookEndpoint.objects.create(account=account, url="https://example.com/hook", secret="s")
    Budget.objects.create(
        account=account, monthly_limit=Decimal("1"), currency="USD", alert_percents=[50]
    )
    spend(account, 0, 600_000)
    budget_alerts_record(now=MONTH + timedelta(days=1))
    assert BudgetAlert.objects.filter(account=account).count() == 1
    close()
    events = WebhookEvent.objects.filter(account=account).order_by("pk")
    assert [e.type for e in events] == ["budget.threshold_crossed", "invoice.finalized"]
    assert events[0].data["percent"] == 50
    assert events[1].data["total_minor"] == 60
    assert events[0].deliveries.count() == 1
