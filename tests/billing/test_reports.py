"""The finance report: its figures are the rollups' sums, in each of its three forms, for staff."""

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db.models import F, Sum
from django.test import Client

from billing.margins import margins_run
from billing.models import UsageRollup
from billing.report_forms import report_csv, report_html
from billing.reports import UNALLOCATED, FinanceReport, finance_report
from billing.rollups import rollups_run
from customers.services import account_create, tiers_ensure_defaults
from metering.models import EnergyInterval, UsageRecord
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
PERIOD = f"{MONTH:%Y-%m}"
FIGURES = ("tokens", "revenue", "energy_cost", "gpu_cost")


@pytest.fixture
def month() -> dict[str, int]:
    """Three accounts on two tiers, three models and two backends over the month, a mid-month
    price rise, and an idle hour on gpu-b; rolled up and margined as the beat would."""
    tiers_ensure_defaults()
    accounts = {
        name: account_create(name=f"{name}-{PERIOD}", tier_slug=tier).pk
        for name, tier in (("acme", "premium"), ("globex", "premium"), ("initech", "free"))
    }
    prices = [
        PriceSpec("premium", "*", Decimal(3), Decimal("0.3"), Decimal(15)),
        PriceSpec("premium", "qwen", Decimal(5), Decimal("0.5"), Decimal(20), Decimal(30)),
        PriceSpec("free", "*", Decimal("0.1"), Decimal(0), Decimal("0.4"), fee=Decimal("0.001")),
    ]
    book_create(BookSpec(MONTH - timedelta(days=40), prices))
    raised = [PriceSpec(p.tier, p.model, p.input * 2, p.cached, p.output * 2) for p in prices]
    book_create(BookSpec(MONTH + timedelta(days=14, hours=5), raised))
    cost_model_create("gpu-a", effective_from=MONTH, gpu_cost_per_hour=Decimal("0.02"))
    cost_model_create("gpu-b", effective_from=MONTH, gpu_cost_per_hour=Decimal("0.015"))
    records = []
    for n in range(240):
        name = ("acme", "globex", "initech")[n % 3]
        records.append(
            usage(
                MONTH + timedelta(hours=3 * n, minutes=n % 60),
                account_id=accounts[name],
                tier="free" if name == "initech" else "premium",
                model=("llama", "qwen", "mistral")[n % 4 % 3],
                backend=("gpu-a", "gpu-b")[n % 2],
                prompt=10_000 + 370 * n,
                cached=n * 30,
                completion=2000 + 110 * n,
                reasoning=n if n % 5 == 0 else 0,
                energy=None if n % 17 == 0 else 900.0 + n,
            )
        )
    usage_write(records)
    EnergyInterval.objects.create(
        backend="gpu-b",
        started_at=MONTH + timedelta(hours=1, minutes=5),
        ended_at=MONTH + timedelta(hours=1, minutes=6),
        energy_j=36_000,
        gpus=1,
        idle_j=36_000,
        attributed_j=0,
        requests=0,
        attributed_at=MONTH + timedelta(hours=2),
    )
    now = NEXT_MONTH + timedelta(hours=3)
    rollups_run(now=now)
    margins_run(now=now)
    return accounts


def rollup_sums(**filters: Any) -> dict[str, Any]:
    """The month's hourly rollups summed in PostgreSQL: what the report must show."""
    hours = UsageRollup.objects.filter(
        grain="hour", bucket__gte=MONTH, bucket__lt=NEXT_MONTH, **filters
    )
    sums = hours.aggregate(
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        revenue=Sum("revenue"),
        energy_cost=Sum("energy_cost"),
        gpu_cost=Sum("gpu_cost"),
    )
    return {
        "tokens": (sums["prompt"] or 0) + (sums["completion"] or 0),
        "revenue": sums["revenue"] or Decimal(0),
        "energy_cost": sums["energy_cost"] or Decimal(0),
        "gpu_cost": sums["gpu_cost"] or Decimal(0),
    }


def figures(report: FinanceReport, dimension: str, key: str) -> dict[str, Any]:
    (line,) = [line for line in report.lines[dimension] if line.key == key]
    return {name: getattr(line, name) for name in FIGURES}


def test_each_tier_model_backend_and_account_is_the_sum_of_its_rollups(
    month: dict[str, int],
) -> None:
    report = finance_report(period_start=MONTH)

    for tier in ("free", "premium"):
        assert figures(report, "tier", tier) == rollup_sums(tier=tier)
    for model in ("llama", "qwen", "mistral"):
        assert figures(report, "model", model) == rollup_sums(model=model)
    for backend in ("gpu-a", "gpu-b"):
        assert figures(report, "backend", backend) == rollup_sums(backend=backend)
    for account_id in month.values():
        assert figures(report, "account", str(account_id)) == rollup_sums(account_id=account_id)


def test_the_total_holds_every_cost_and_hours_without_requests_are_shown_apart(
    month: dict[str, int],
) -> None:
    report = finance_report(period_start=MONTH)

    total = {name: getattr(report.total, name) for name in FIGURES}
    assert total == rollup_sums()
    unallocated = rollup_sums(account_id=0)
    # Most hours of the month are idle GPU time on both backends; gpu-b also idled in energy.
    assert unallocated["gpu_cost"] > Decimal("0.035") * 24 * 31 / 2
    assert unallocated["energy_cost"] > 0
    for dimension in ("tier", "model", "account"):
        assert figures(report, dimension, UNALLOCATED) == unallocated
    assert report.total.margin == total["revenue"] - total["energy_cost"] - total["gpu_cost"]
    assert report.total.margin > 0
    assert report.total.margin_pct == pytest.approx(
        report.total.margin * 100 / total["revenue"], rel=Decimal("1e-15")
    )


def test_ratios_divide_only_the_tokens_whose_energy_was_measured(month: dict[str, int]) -> None:
    report = finance_report(period_start=MONTH)

    (premium,) = [line for line in report.lines["tier"] if line.key == "premium"]
    sums = rollup_sums(tier="premium")
    # One record in 17 has no energy: the ratios leave its tokens out.
    records = UsageRecord.objects.filter(
        started_at__gte=MONTH, started_at__lt=NEXT_MONTH, tier="premium"
    )
    measured = records.filter(energy_joules__isnull=False).aggregate(
        tokens=Sum(F("prompt_tokens") + F("completion_tokens"))
    )["tokens"]
    assert 0 < measured < sums["tokens"]
    assert premium.measured_tokens == measured
    assert premium.measured_token_share == pytest.approx(Decimal(measured) / sums["tokens"])
    assert premium.cost_per_million_tokens == pytest.approx(
        sums["energy_cost"] * 1_000_000 / measured + sums["gpu_cost"] * 1_000_000 / sums["tokens"]
    )
    kwh = (
        UsageRollup.objects.filter(
            grain="hour", bucket__gte=MONTH, bucket__lt=NEXT_MONTH, tier="premium"
        ).aggregate(joules=Sum("energy_joules"))["joules"]
        / 3_600_000
    )
    assert premium.tokens_per_kwh is not None and premium.joules_per_token is not None
    assert float(premium.tokens_per_kwh) == pytest.approx(measured / kwh, rel=1e-9)
    assert float(premium.joules_per_token) == pytest.approx(kwh * 3_600_000 / measured, rel=1e-9)


def test_the_csv_has_every_key_unrounded(month: dict[str, int]) -> None:
    report = finance_report(period_start=MONTH, top=None)
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))

    by_key = {(row["dimension"], row["key"]): row for row in rows}
    acme = by_key[("account", str(month["acme"]))]
    assert acme["label"] == f"acme-{PERIOD} (#{month['acme']})"
    assert Decimal(acme["revenue"]) == rollup_sums(account_id=month["acme"])["revenue"]
    assert Decimal(by_key[("total", "")]["gpu_cost"]) == rollup_sums()["gpu_cost"]
    days = [row for row in rows if row["dimension"] == "day"]
    assert len(days) == 31
    assert sum(Decimal(row["revenue"]) for row in days) == report.total.revenue


def test_accounts_beyond_the_top_are_summed_in_one_row(month: dict[str, int]) -> None:
    report = finance_report(period_start=MONTH, top=1)

    accounts = report.lines["account"]
    assert [line.label for line in accounts[1:]] == [
        "2 others",
        "unallocated (backend hours without requests)",
    ]
    assert sum(line.revenue for line in accounts) == report.total.revenue


def test_the_html_shows_the_charts_as_inline_svg_with_their_own_ids(
    month: dict[str, int],
) -> None:
    html = report_html(finance_report(period_start=MONTH))

    assert html.count("<svg") == 7
    ids = re.findall(r'id="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert "<script" not in html
    assert 'src="http' not in html
    assert f"acme-{PERIOD}" in html


def test_the_pdf_is_a_printable_document(month: dict[str, int], tmp_path: Path) -> None:
    out = tmp_path / "report.pdf"
    call_command("finance_report", "--period", PERIOD, "--format", "pdf", "--output", str(out))

    pdf = out.read_bytes()
    assert pdf.startswith(b"%PDF-1.")
    assert pdf.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type /Page\b", pdf)) >= 2


def test_the_command_says_why_it_has_no_report_of_a_currency(
    month: dict[str, int], tmp_path: Path
) -> None:
    out = tmp_path / "report.csv"
    with pytest.raises(CommandError, match="EUR"):
        call_command(
            "finance_report", "--period", PERIOD, "--currency", "eur", "--output", str(out)
        )
    assert not out.exists()


def test_a_month_without_margins_is_an_empty_report() -> None:
    report = finance_report(period_start=MONTH)

    assert report.total.revenue == 0
    assert report.total.margin_pct is None
    assert all(not lines for lines in report.lines.values())
    assert "no margins stored for this period" in report_html(report)


# Views --------------------------------------------------------------------------------------


def url(fmt: str) -> str:
    return f"/billing/report/{PERIOD}.{fmt}"


@pytest.mark.parametrize("fmt", ["html", "csv", "pdf"])
def test_anonymous_users_are_sent_to_sign_in(client: Client, fmt: str) -> None:
    response = client.get(url(fmt))

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_a_signed_in_user_who_is_not_staff_is_refused(client: Client) -> None:
    client.force_login(User.objects.create_user("reader"))

    response = client.get(url("csv"))

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize(
    ("fmt", "content_type", "start"),
    [
        ("html", "text/html", b"<!doctype html>"),
        ("csv", "text/csv", b"period,"),
        ("pdf", "application/pdf", b"%PDF"),
    ],
)
def test_staff_get_each_form(
    month: dict[str, int], client: Client, fmt: str, content_type: str, start: bytes
) -> None:
    client.force_login(User.objects.create_user("finance", is_staff=True))

    response = client.get(url(fmt))

    assert response.status_code == 200
    assert response["Content-Type"].startswith(content_type)
    assert response.content.startswith(start)
    if fmt != "html":
        assert f'filename="finance-{PERIOD}.{fmt}"' in response["Content-Disposition"]


@pytest.mark.parametrize(
    "path",
    ["/billing/report/2025-13.html", "/billing/report/2025-03.xls", "/billing/report/9999-12.csv"],
)
def test_an_unknown_period_or_form_is_not_found(client: Client, path: str) -> None:
    client.force_login(User.objects.create_user("finance", is_staff=True))

    assert client.get(path).status_code == 404


@pytest.mark.parametrize("currency", ["ZZZZ", "U$D", "%00"])
def test_a_currency_that_is_not_a_code_is_a_bad_request(client: Client, currency: str) -> None:
    client.force_login(User.objects.create_user("finance", is_staff=True))

    response = client.get(url("csv") + f"?currency={currency}")

    assert response.status_code == 400
    assert b"three-letter code" in response.content
