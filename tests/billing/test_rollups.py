"""Rollups and margins: what finance sees per hour, day and month, and that re-runs agree."""

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings

from billing.margins import margins_run
from billing.models import JobRun, Margin, UsageRollup
from billing.rating import Quantities
from billing.rollups import rollups_rebuild, rollups_run
from billing.selectors import price_list, usage_unpriced
from metering.models import EnergyInterval
from tests.billing.factories import (
    MONTH,
    BookSpec,
    PriceSpec,
    book_create,
    books_in_month,
    cost_model_create,
    records_in_month,
    rolled_back,
    table,
    usage,
    usage_write,
)

pytestmark = pytest.mark.django_db
HOUR = MONTH + timedelta(hours=10)
KWH = 3_600_000.0
PREMIUM = PriceSpec("premium", "*", Decimal(3), Decimal("0.3"), Decimal(15))


def idle(backend: str, started_at: Any, idle_j: float) -> EnergyInterval:
    return EnergyInterval.objects.create(
        backend=backend,
        started_at=started_at,
        ended_at=started_at + timedelta(seconds=10),
        energy_j=idle_j,
        gpus=1,
        idle_j=idle_j,
        attributed_j=0,
        requests=0,
        attributed_at=started_at + timedelta(seconds=20),
    )


def rows(grain: str, **filters: Any) -> list[UsageRollup]:
    return list(UsageRollup.objects.filter(grain=grain, **filters).order_by("account_id"))


@pytest.fixture
def hour_of_two() -> None:
    """Two accounts share an hour of gpu-a (12/h, 0.20/kWh, PUE 1.25) with 0.25 kWh idle."""
    book_create(BookSpec(MONTH - timedelta(days=40), [PREMIUM]))
    cost_model_create("gpu-a")
    usage_write(
        [
            usage(
                HOUR + timedelta(minutes=1),
                account_id=1,
                prompt=1_000_000,
                completion=0,
                energy=KWH,
            ),
            usage(
                HOUR + timedelta(minutes=2),
                account_id=2,
                prompt=0,
                completion=1_000_000,
                energy=KWH / 2,
            ),
        ]
    )
    idle("gpu-a", HOUR + timedelta(minutes=30), KWH / 4)


def test_an_hour_is_rated_and_its_costs_shared_by_energy(hour_of_two: None) -> None:
    rollups_run(now=MONTH + timedelta(days=1))

    first, second = rows("hour", bucket=HOUR)
    assert (first.account_id, first.requests, first.prompt_tokens) == (1, 1, 1_000_000)
    assert first.revenue == Decimal(3)
    assert second.revenue == Decimal(15)
    # Own energy at 0.25 per kWh (0.20 x PUE 1.25), plus 2/3 and 1/3 of the idle 0.0625.
    assert first.energy_cost == Decimal("0.291666666667")
    assert second.energy_cost == Decimal("0.145833333333")
    assert (first.gpu_cost, second.gpu_cost) == (Decimal(8), Decimal(4))
    assert first.energy_joules == pytest.approx(KWH + KWH / 6)


def test_an_hour_without_requests_is_the_backends_unallocated_cost(hour_of_two: None) -> None:
    rollups_run(now=MONTH + timedelta(days=1))

    (unallocated,) = rows("hour", bucket=HOUR + timedelta(hours=1))
    assert (unallocated.account_id, unallocated.tier, unallocated.backend) == (0, "", "gpu-a")
    assert unallocated.gpu_cost == Decimal(12)
    assert unallocated.requests == 0
    # Every hour of the day costs its GPU time, busy or not: nothing is dropped.
    day = UsageRollup.objects.filter(grain="day", bucket=MONTH).aggregate(gpu=Sum("gpu_cost"))
    assert day["gpu"] == Decimal(24 * 12)


def test_the_day_is_the_sum_of_its_hours(hour_of_two: None) -> None:
    rollups_run(now=MONTH + timedelta(days=1))

    first, second = rows("day", bucket=MONTH, account_id__gt=0)
    assert (first.revenue, second.revenue) == (Decimal(3), Decimal(15))
    assert first.gpu_cost + second.gpu_cost == Decimal(12)


def test_late_usage_inside_the_grace_window_lands_in_its_hour(hour_of_two: None) -> None:
    now = HOUR + timedelta(hours=2, minutes=10)
    rollups_run(now=now)
    usage_write([usage(HOUR + timedelta(minutes=5), account_id=3, prompt=1_000_000)])

    rollups_run(now=now + timedelta(minutes=5))

    assert [r.account_id for r in rows("hour", bucket=HOUR)] == [1, 2, 3]


def test_usage_later_than_the_grace_window_is_rolled_up_by_its_arrival(hour_of_two: None) -> None:
    now = HOUR + timedelta(hours=5)
    rollups_run(now=now)
    margins_run(now=now)
    usage_write([usage(HOUR + timedelta(minutes=5), account_id=3, prompt=1_000_000)])

    rollups_run(now=now + timedelta(minutes=5))

    assert [r.account_id for r in rows("hour", bucket=HOUR)] == [1, 2, 3]
    assert [r.account_id for r in rows("day", bucket=MONTH, account_id__gt=0)] == [1, 2, 3]
    margins_run(now=now + timedelta(minutes=10))
    assert Margin.objects.filter(grain="day", bucket=MONTH, dimension="account", key="3").exists()


def test_a_rebuild_redoes_any_hours_and_their_margins(hour_of_two: None) -> None:
    now = HOUR + timedelta(hours=5)
    rollups_run(now=now)
    margins_run(now=now)
    UsageRollup.objects.filter(grain="hour", bucket=HOUR, account_id=2).delete()

    rollups_rebuild(since=HOUR, until=HOUR + timedelta(hours=1))

    assert [r.account_id for r in rows("hour", bucket=HOUR)] == [1, 2]
    assert JobRun.objects.get(job="margins").watermark == HOUR


def test_usage_without_a_price_is_worth_nothing_and_reported(hour_of_two: None) -> None:
    usage_write([usage(HOUR, account_id=4, tier="free", model="qwen", prompt=500, completion=5)])
    rollups_run(now=MONTH + timedelta(days=1))

    (row,) = rows("hour", bucket=HOUR, account_id=4)
    assert (row.price_book, row.revenue) == (None, 0)
    (unpriced,) = usage_unpriced(since=MONTH, until=MONTH + timedelta(days=1))
    assert (unpriced.tier, unpriced.model, unpriced.requests, unpriced.tokens) == (
        "free",
        "qwen",
        1,
        505,
    )


def test_a_second_run_changes_nothing(hour_of_two: None) -> None:
    now = MONTH + timedelta(days=1)
    rollups_run(now=now)
    margins_run(now=now)
    before = table("billing_usagerollup")
    margins = table("billing_margin")

    rollups_run(now=now, wait=True)
    margins_run(now=now, wait=True)

    assert table("billing_usagerollup") == before
    assert table("billing_margin") == margins


def test_margins_by_tier_and_backend(hour_of_two: None) -> None:
    now = MONTH + timedelta(days=1)
    rollups_run(now=now)
    margins_run(now=now)

    day = Margin.objects.filter(grain="day", bucket=MONTH)
    premium = day.get(dimension="tier", key="premium")
    assert premium.tokens == 2_000_000
    assert premium.revenue == Decimal(18)
    assert premium.gpu_cost == Decimal(12)
    assert premium.energy_cost == Decimal("0.4375")  # 1.5 kWh used + 0.25 idle, at 0.25
    assert premium.margin == Decimal("5.5625")
    assert premium.margin_pct == Decimal("30.9028")
    assert premium.cost_per_million_tokens == Decimal("6.21875")
    assert premium.tokens_per_kwh == Decimal("1142857.142857142857")
    gpu_a = day.get(dimension="backend", key="gpu-a")
    assert gpu_a.gpu_cost == Decimal(24 * 12)
    assert day.get(dimension="tier", key="(unallocated)").gpu_cost == Decimal(23 * 12)
    month = Margin.objects.get(grain="month", bucket=MONTH, dimension="tier", key="premium")
    assert month.revenue == Decimal(18)


def test_every_dimension_adds_up_to_the_same_totals(hour_of_two: None) -> None:
    now = MONTH + timedelta(days=1)
    rollups_run(now=now)
    margins_run(now=now)

    totals = {
        dimension: Margin.objects.filter(grain="day", bucket=MONTH, dimension=dimension).aggregate(
            revenue=Sum("revenue"), cost=Sum("energy_cost") + Sum("gpu_cost"), tokens=Sum("tokens")
        )
        for dimension in ("tier", "model", "backend", "account")
    }
    assert len({tuple(t.values()) for t in totals.values()}) == 1


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(books=books_in_month(), records=records_in_month(accounts=(1, 2, 3)))
def test_rollups_hold_every_rated_record_and_every_cost(
    books: list[BookSpec], records: list[dict[str, Any]]
) -> None:
    with rolled_back():
        for spec in books:
            book_create(spec)
        cost_model_create("gpu-a", effective_from=MONTH)
        cost_model_create("gpu-b", effective_from=MONTH, gpu_cost_per_hour=Decimal("7.5"))
        cost_model_create("gpu-b", effective_from=MONTH + timedelta(days=3, minutes=20))
        usage_write(records)
        now = MONTH + timedelta(days=32)
        rollups_run(now=now)

        prices = price_list(currency="USD")
        for account in (1, 2, 3):
            expected = sum(
                (rated_total(prices, r) for r in records if r["account_id"] == account),
                Decimal(0),
            )
            for grain in ("hour", "day"):
                got = UsageRollup.objects.filter(grain=grain, account_id=account)
                assert (got.aggregate(r=Sum("revenue"))["r"] or 0) == expected
        hours = UsageRollup.objects.filter(grain="hour")
        gpu = hours.aggregate(gpu=Sum("gpu_cost"))["gpu"]
        # gpu-a all month at 12/h; gpu-b at 7.5/h for 3 days 20 minutes, then 12/h.
        hours_b = Decimal(3 * 24) + Decimal(1) / 3
        expected_gpu = 32 * 24 * 12 + hours_b * Decimal("7.5") + (32 * 24 - hours_b) * 12
        assert abs(gpu - expected_gpu) < Decimal("1e-9")
        # Energy is summed in whole millijoules, as the rollup does (exact in any order).
        energy = sum(round((r["energy_joules"] or 0) * 1000) for r in records) / 1000 / KWH * 0.25
        assert float(hours.aggregate(e=Sum("energy_cost"))["e"]) == pytest.approx(energy)

        before = table("billing_usagerollup")
        rollups_rebuild(since=MONTH, until=now)
        assert table("billing_usagerollup") == (before)


def rated_total(prices: Any, record: dict[str, Any]) -> Decimal:
    rated = prices.rate(
        tier=record["tier"],
        model=record["model"],
        at=record["started_at"],
        quantities=Quantities.of(
            prompt=record["prompt_tokens"],
            cached=record["cached_prompt_tokens"],
            completion=record["completion_tokens"],
            reasoning=record["reasoning_tokens"],
        ),
    )
    return rated[1].total if rated else Decimal(0)
