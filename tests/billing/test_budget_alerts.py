"""Budget alerts as finance and the customer see them: each threshold once, at the spend the
invoice's rating gives (prices in force when each request started, no fee for a request that
failed on every backend), late usage included, and only for budgets in billing's currency."""

import logging
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billing.budgets import budget_alerts_record
from billing.models import BudgetAlert
from billing.rollups import rollups_run
from catalogue.models import Price, PriceBook
from customers.models import Account, Budget
from customers.services import account_create, tiers_ensure_defaults
from metering.models import UsageRecord

pytestmark = pytest.mark.django_db
CURRENCY = "XTS"
MARCH = datetime(2031, 3, 1, tzinfo=UTC)
APRIL = datetime(2031, 4, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def billing_in_currency(settings: Any) -> None:
    settings.BILLING = {**settings.BILLING, "CURRENCY": CURRENCY}


@pytest.fixture(autouse=True)
def books() -> None:
    """Prices change on the 15th: dearer output, reasoning priced apart, a request fee."""
    tiers_ensure_defaults()
    first = PriceBook.objects.create(name="march", currency=CURRENCY, effective_from=MARCH)
    second = PriceBook.objects.create(
        name="mid-march", currency=CURRENCY, effective_from=MARCH + timedelta(days=14)
    )
    for book, output, reasoning, fee in (
        (first, "2", None, "0"),
        (second, "3", "9", "0.01"),
    ):
        Price.objects.create(
            price_book=book,
            tier="interactive",
            model="*",
            input_per_million=Decimal("1"),
            cached_input_per_million=Decimal("0.5"),
            output_per_million=Decimal(output),
            reasoning_per_million=None if reasoning is None else Decimal(reasoning),
            request_fee=Decimal(fee),
        )
    # A model of its own: its row beats the tier's "*".
    Price.objects.create(
        price_book=first,
        tier="interactive",
        model="big",
        input_per_million=Decimal("10"),
        cached_input_per_million=Decimal("5"),
        output_per_million=Decimal("20"),
        request_fee=Decimal("0"),
    )


def budgeted(limit: str, percents: list[int], currency: str = CURRENCY) -> Account:
    account = account_create(name=f"acct-{uuid.uuid4().hex[:8]}", tier_slug="interactive")
    Budget.objects.create(
        account=account,
        monthly_limit=Decimal(limit),
        currency=currency,
        alert_percents=percents,
        hard_cap=False,
    )
    return account


def use(
    account: Account,
    at: datetime,
    *,
    model: str = "small",
    tier: str = "interactive",
    prompt: int = 0,
    cached: int = 0,
    completion: int = 0,
    reasoning: int = 0,
    outcome: str = "ok",
) -> None:
    UsageRecord.objects.create(
        request_id=uuid.uuid4(),
        account_id=account.pk,
        api_key_id=1,
        tier=tier,
        model=model,
        backend="gpu-0",
        endpoint="chat.completions",
        prompt_tokens=prompt,
        cached_prompt_tokens=cached,
        completion_tokens=completion,
        reasoning_tokens=reasoning,
        latency_ms=10.0,
        status_code=200 if outcome == "ok" else 502,
        outcome=outcome,
        streamed=False,
        started_at=at,
        ended_at=at + timedelta(seconds=1),
    )


def alerts(account: Account) -> list[tuple[datetime, int, Decimal]]:
    rows = BudgetAlert.objects.filter(account=account).order_by("period_start", "percent")
    return [(a.period_start, a.percent, a.spent) for a in rows]


def test_spend_is_rated_with_the_prices_in_force_when_each_request_started() -> None:
    account = budgeted("1", [10, 50, 90])
    # Before the change: reasoning at the output price, no fee.
    use(
        account,
        MARCH + timedelta(days=2),
        prompt=1_200_000,
        cached=200_000,
        completion=100_000,
        reasoning=40_000,
    )
    # After it: the fee, and reasoning at its own price.
    use(account, MARCH + timedelta(days=20), prompt=10, completion=1_000, reasoning=1_000)
    # Unpriced (no row for the tier) and another account's usage count nothing.
    use(account, MARCH + timedelta(days=3), tier="premium", prompt=10**7)
    use(budgeted("1", [10]), MARCH + timedelta(days=3), prompt=10**7)

    recorded = budget_alerts_record(now=MARCH + timedelta(days=25))

    first = Decimal("1") + Decimal("0.1") + Decimal("0.2")  # input, cached, output
    second = Decimal("0.00001") + Decimal("0.009") + Decimal("0.01")  # input, reasoning, fee
    spent = first + second
    assert alerts(account) == [(MARCH, 10, spent), (MARCH, 50, spent), (MARCH, 90, spent)]
    assert {(a.account_id, a.percent) for a in recorded} >= {(account.pk, 90)}


def test_each_threshold_is_recorded_once_and_later_ones_when_reached() -> None:
    account = budgeted("0.001", [50, 100, 150])
    use(account, MARCH + timedelta(days=1), model="big", prompt=60)  # 0.0006 at the model's price
    now = MARCH + timedelta(days=2)
    assert [
        (a.percent, a.spent) for a in budget_alerts_record(now=now) if a.account_id == account.pk
    ] == [(50, Decimal("0.0006"))]
    assert not [a for a in budget_alerts_record(now=now) if a.account_id == account.pk]

    use(account, MARCH + timedelta(days=2), prompt=500)  # 0.0005 at the tier's price
    assert [a.percent for a in budget_alerts_record(now=now) if a.account_id == account.pk] == [100]
    assert [percent for _, percent, _ in alerts(account)] == [50, 100]


def test_late_usage_of_the_month_just_ended_alerts_within_the_grace_window() -> None:
    account = budgeted("0.001", [100])
    use(account, APRIL - timedelta(seconds=1), completion=500)  # 0.0015 + the 0.01 fee
    assert budget_alerts_record(now=APRIL + timedelta(hours=3)) == []  # grace (2 h) is over
    budget_alerts_record(now=APRIL + timedelta(minutes=30))
    assert alerts(account) == [(MARCH, 100, Decimal("0.0115"))]


def test_rolled_up_hours_and_the_ledger_after_them_add_up_to_the_spend() -> None:
    account = budgeted("0.02", [100, 112, 113])
    use(account, MARCH + timedelta(days=1, hours=5), prompt=1000)  # a whole day rolled up
    use(account, MARCH + timedelta(days=19, hours=10), prompt=500, completion=100)  # an hour
    use(account, MARCH + timedelta(days=19, hours=12, minutes=15), completion=200)  # the ledger
    rollups_run(now=MARCH + timedelta(days=19, hours=12, minutes=5))

    budget_alerts_record(now=MARCH + timedelta(days=19, hours=12, minutes=30))

    # 0.001; 0.0005 + 0.0003 + 0.01 fee; 0.0006 + 0.01 fee
    spent = Decimal("0.001") + Decimal("0.0108") + Decimal("0.0106")
    assert alerts(account) == [(MARCH, 100, spent), (MARCH, 112, spent)]  # 112% spent


def test_a_request_that_failed_on_every_backend_counts_its_tokens_without_the_fee() -> None:
    account = budgeted("0.01", [20, 100])
    at = MARCH + timedelta(days=20)  # the book with a 0.01 fee
    use(account, at, prompt=3000, outcome="backend_error")  # 0.003, no fee
    use(account, at, outcome="backend_error")  # nothing at all

    budget_alerts_record(now=at + timedelta(hours=1))

    assert alerts(account) == [(MARCH, 20, Decimal("0.003"))]


def test_a_budget_in_another_currency_raises_no_alert_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Written before budgets had to be in billing's currency: its limit cannot be compared
    with the spend without an exchange rate."""
    account = budgeted("0.001", [10], currency="EUR")
    use(account, MARCH + timedelta(days=2), prompt=10**6)

    with caplog.at_level(logging.WARNING, logger="billing.budgets"):
        budget_alerts_record(now=MARCH + timedelta(days=3))

    assert alerts(account) == []
    (logged,) = [r for r in caplog.records if "another currency" in r.getMessage()]
    assert logged.account_ids == [account.pk]  # type: ignore[attr-defined]
