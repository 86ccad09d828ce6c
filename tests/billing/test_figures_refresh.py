"""`figures_refresh`: usage minutes old shows in the margins at once, the hour in progress
costed up to now, and the beat's next run after the hour makes that hour whole."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models import Sum

from billing.margins import figures_refresh
from billing.models import JobRun, Margin, UsageRollup
from billing.rollups import rollups_run
from tests.billing.factories import (
    MONTH,
    BookSpec,
    PriceSpec,
    book_create,
    cost_model_create,
    usage,
    usage_write,
)

pytestmark = pytest.mark.django_db
HOUR = MONTH + timedelta(days=4, hours=10)


@pytest.fixture
def usage_this_hour() -> None:
    book_create(BookSpec(MONTH, [PriceSpec("premium", "*", Decimal(3), Decimal(1), Decimal(9))]))
    cost_model_create("gpu-a", effective_from=MONTH, gpu_cost_per_hour=Decimal("12"))
    usage_write([usage(HOUR + timedelta(minutes=m), energy=500.0) for m in (5, 10, 20)])


def hour_rollup(field: str) -> Decimal:
    rows = UsageRollup.objects.filter(grain="hour", bucket=HOUR, backend="gpu-a")
    return Decimal(rows.aggregate(total=Sum(field))["total"])


def test_it_rolls_up_the_hour_in_progress_with_its_gpu_time_up_to_now(
    usage_this_hour: None,
) -> None:
    window = figures_refresh(now=HOUR + timedelta(minutes=30))

    assert (window.since, window.until) == (MONTH, HOUR + timedelta(minutes=30))
    assert hour_rollup("gpu_cost") == Decimal(6)
    assert hour_rollup("revenue") == 3 * (Decimal("0.003") + Decimal("0.0009"))
    month = Margin.objects.get(grain="month", bucket=MONTH, dimension="tier", key="premium")
    assert (month.tokens, month.measured_tokens, month.gpu_cost) == (3300, 3300, Decimal(6))
    # The jobs' watermark stays at the last whole hour: budgets read rollups only up to it.
    assert JobRun.objects.get(job="rollups").watermark == HOUR


def test_the_next_rollup_after_the_hour_makes_it_whole(usage_this_hour: None) -> None:
    figures_refresh(now=HOUR + timedelta(minutes=30))
    usage_write([usage(HOUR + timedelta(minutes=45), energy=500.0)])

    rollups_run(now=HOUR + timedelta(hours=1, minutes=5))

    assert hour_rollup("gpu_cost") == Decimal(12)
    assert hour_rollup("prompt_tokens") == 4000


def test_the_command_prints_how_far_the_figures_go(
    usage_this_hour: None, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("refresh_figures", "--settle", "0")

    assert capsys.readouterr().out.startswith("figures of ")
    assert Margin.objects.filter(grain="month", bucket=MONTH).exists()
