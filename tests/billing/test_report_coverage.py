"""The finance report's ratios divide only what was measured, and it says what was not:
usage without energy, backends without telemetry or a cost model, usage without a price."""

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection

from billing.margins import margins_run
from billing.report_forms import _cells, report_csv, report_html
from billing.reports import FinanceReport, Line, finance_report
from billing.rollups import rollups_rebuild, rollups_run
from console.dashboard import dashboard_data
from customers.services import account_create, tiers_ensure_defaults
from metering.models import EnergyInterval
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    book_create,
    cost_model_create,
    usage,
    usage_write,
)

pytestmark = pytest.mark.django_db
AFTER_MONTH = NEXT_MONTH + timedelta(hours=3)


@pytest.fixture
def mixed() -> dict[str, int]:
    """Premium usage on three backends: gpu-a measured (with an idle interval), gpu-b without
    telemetry (no energy), gpu-c measured but without a cost model; and interactive usage,
    which the book does not price. Rolled up and margined as the beat would."""
    tiers_ensure_defaults()
    acme = account_create(name="acme-coverage", tier_slug="premium").pk
    initech = account_create(name="initech-coverage", tier_slug="interactive").pk
    book_create(BookSpec(MONTH - timedelta(days=1), [PriceSpec("premium", "*", *_PRICES)]))
    cost_model_create("gpu-a", effective_from=MONTH, gpu_cost_per_hour=Decimal("2"))
    cost_model_create("gpu-b", effective_from=MONTH, gpu_cost_per_hour=Decimal("1.5"))
    records = []
    for n in range(60):
        backend = ("gpu-a", "gpu-b", "gpu-c")[n % 3]
        records.append(
            usage(
                MONTH + timedelta(hours=5 * n, minutes=n % 50),
                account_id=initech if n % 5 == 0 else acme,
                tier="interactive" if n % 5 == 0 else "premium",
                backend=backend,
                prompt=2000 + 90 * n,
                cached=10 * n,
                completion=300 + 20 * n,
                energy=None if backend == "gpu-b" else 400.0 + 3 * n,
            )
        )
    usage_write(records)
    EnergyInterval.objects.create(
        backend="gpu-a",
        started_at=MONTH + timedelta(minutes=1),
        ended_at=MONTH + timedelta(minutes=2),
        energy_j=7200,
        gpus=1,
        idle_j=6600,
        attributed_j=600,
        requests=1,
        attributed_at=MONTH + timedelta(hours=1),
    )
    rollups_run(now=AFTER_MONTH)
    margins_run(now=AFTER_MONTH)
    return {"acme": acme, "initech": initech}


_PRICES = (Decimal("0.30"), Decimal("0.15"), Decimal("0.90"))


def line(report: FinanceReport, dimension: str, key: str) -> Line:
    (found,) = [item for item in report.lines[dimension] if item.key == key]
    return found


def exactly(value: Decimal) -> object:
    """Equal but for the last digits PostgreSQL's numeric division keeps beyond Python's."""
    return pytest.approx(value, rel=Decimal("1e-18"))


def ledger(where: str) -> tuple[int, int]:
    """(requests, prompt + completion tokens) of the month's records matching `where`."""
    with connection.cursor() as cursor:
        sql = (
            "SELECT count(*), coalesce(sum(prompt_tokens + completion_tokens), 0) "
            "FROM metering_usagerecord WHERE started_at >= %s AND started_at < %s AND "
        )
        cursor.execute(sql + where, [MONTH, NEXT_MONTH])  # test constants
        requests, tokens = cursor.fetchone()
    return int(requests), int(tokens)


def test_energy_ratios_over_a_mix_are_the_ratios_over_the_measured_records_alone(
    mixed: dict[str, int],
) -> None:
    mix = finance_report(period_start=MONTH).total
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM metering_usagerecord WHERE energy_joules IS NULL")
    rollups_rebuild(since=MONTH, until=NEXT_MONTH)
    margins_run(now=AFTER_MONTH, wait=True)
    measured_only = finance_report(period_start=MONTH).total

    assert mix.tokens > measured_only.tokens
    assert mix.measured_tokens == measured_only.tokens
    assert mix.energy_kwh == measured_only.energy_kwh
    assert mix.tokens_per_kwh == measured_only.tokens_per_kwh
    assert mix.joules_per_token == measured_only.joules_per_token
    assert mix.energy_cost_per_million_tokens == measured_only.energy_cost_per_million_tokens
    assert measured_only.measured_token_share == 1


def test_the_coverage_is_shown_beside_the_ratios(mixed: dict[str, int]) -> None:
    report = finance_report(period_start=MONTH)

    requests, tokens = ledger("true")
    _, measured = ledger("energy_joules IS NOT NULL")
    total = report.total
    assert (total.requests, total.tokens, total.measured_tokens) == (requests, tokens, measured)
    assert total.measured_token_share == exactly(Decimal(measured) / tokens)
    assert total.measured_request_share == exactly(Decimal(40) / 60)
    assert total.tokens_per_kwh == exactly(measured / total.energy_kwh)
    gpu_b = line(report, "backend", "gpu-b")
    assert (gpu_b.measured_tokens, gpu_b.tokens_per_kwh, gpu_b.joules_per_token) == (0, None, None)
    assert gpu_b.cost_per_million_tokens is None
    assert _cells(total, "USD")[10] == (
        f"{Decimal(measured) * 100 / tokens:.1f}% · {Decimal(4000) / 60:.1f}%"
    )


def test_it_names_the_backends_without_telemetry_or_a_cost_model(mixed: dict[str, int]) -> None:
    report = finance_report(period_start=MONTH)

    assert report.gaps.unmeasured_backends == ["gpu-b (no telemetry)"]
    assert report.gaps.uncosted_backends == ["gpu-c"]
    html = report_html(report)
    assert "No energy measured on gpu-b (no telemetry)." in html
    assert "No cost model for gpu-c." in html


def test_cost_per_million_tokens_divides_each_cost_by_the_tokens_it_knows(
    mixed: dict[str, int],
) -> None:
    total = finance_report(period_start=MONTH).total

    _, costed = ledger("backend IN ('gpu-a', 'gpu-b')")
    _, costed_measured = ledger("backend = 'gpu-a'")
    assert total.costed_tokens == costed
    assert total.gpu_cost_per_million_tokens == exactly(total.gpu_cost * 1_000_000 / costed)
    assert total.energy_cost_per_million_tokens == exactly(
        total.energy_cost * 1_000_000 / costed_measured
    )
    assert total.cost_per_million_tokens == (
        total.energy_cost_per_million_tokens + total.gpu_cost_per_million_tokens
    )


def test_usage_without_a_price_is_unpriced_with_its_tokens_never_zero_revenue(
    mixed: dict[str, int],
) -> None:
    report = finance_report(period_start=MONTH, top=None)

    requests, tokens = ledger("tier = 'interactive'")
    interactive = line(report, "tier", "interactive")
    assert interactive.unpriced
    assert (interactive.unpriced_requests, interactive.unpriced_tokens) == (requests, tokens)
    assert _cells(interactive, "USD")[3] == "unpriced"
    assert _cells(interactive, "USD")[6] == "unpriced"
    assert _cells(report.total, "USD")[3].endswith(" + unpriced")
    rows = {
        (row["dimension"], row["key"]): row
        for row in csv.DictReader(io.StringIO(report_csv(report)))
    }
    assert rows[("tier", "interactive")]["revenue"] == ""
    assert rows[("tier", "interactive")]["unpriced_tokens"] == str(tokens)
    assert rows[("account", str(mixed["initech"]))]["revenue"] == ""
    assert Decimal(rows[("tier", "premium")]["revenue"]) > 0
    assert (
        f"Unpriced: interactive / llama, {tokens:,} tokens in {requests:,} requests"
        in report_html(report)
    )


def test_margin_percent_is_of_the_priced_usage(mixed: dict[str, int]) -> None:
    report = finance_report(period_start=MONTH)

    total, interactive = report.total, line(report, "tier", "interactive")
    priced_cost = total.cost - interactive.cost
    assert total.margin == total.revenue - total.cost
    assert total.margin_pct == exactly((total.revenue - priced_cost) * 100 / total.revenue)
    assert interactive.margin_pct is None


def test_the_dashboard_shows_the_month_by_tier_with_its_coverage_and_gaps(
    mixed: dict[str, int],
) -> None:
    month = dashboard_data(now=MONTH + timedelta(days=20))["month"]

    rows = {row[0]: dict(zip(month["header"], row, strict=True)) for row in month["rows"]}
    unallocated = "unallocated (backend hours without requests)"
    assert list(rows) == ["premium", "interactive", unallocated, "total"]
    assert rows["interactive"]["revenue"] == "unpriced"  # not 0.00
    assert Decimal(rows["premium"]["revenue"].replace(",", "")) > 0
    _, measured = ledger("tier = 'premium' AND energy_joules IS NOT NULL")
    _, tokens = ledger("tier = 'premium'")
    coverage = rows["premium"]["energy measured (tokens · requests)"]
    assert coverage.startswith(f"{Decimal(measured) * 100 / tokens:.1f}% · ")
    summary = dict(month["summary"])
    assert summary["Energy measured"].endswith("66.7% of requests")
    assert "No energy measured on gpu-b (no telemetry)." in month["gaps"]
    assert "No cost model for gpu-c." in month["gaps"]
