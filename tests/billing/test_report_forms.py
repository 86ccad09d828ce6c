"""What the finance report's forms show: day rows with their ratios, money with the precision
its size needs, margin % only where it means something, a PDF that prints (numbered pages,
axis text of a readable size) and charts one huge key does not flatten."""

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from reportlab.graphics.charts.barcharts import HorizontalBarChart, VerticalBarChart

from billing import charts
from billing.margins import margins_run
from billing.models import Margin
from billing.report_forms import _charts, _money, report_csv, report_html, report_pdf
from billing.reports import FinanceReport, Line, finance_report
from billing.rollups import rollups_run
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
    cost_model_create,
    usage,
    usage_write,
)
from tests.billing.test_report_invoices import pdf_text

pytestmark = pytest.mark.django_db


@pytest.fixture
def month() -> dict[str, int]:
    """Ten days on which a premium account earns well and a free one almost nothing, in the
    same hours on one backend; every record measured (900 J: energy costs a fraction of a
    cent a day)."""
    book_create(
        BookSpec(
            MONTH - timedelta(days=40),
            [
                PriceSpec("premium", "llama", Decimal("2.5"), Decimal("0.25"), Decimal(10)),
                PriceSpec("free", "*", Decimal("0.001"), Decimal(0), Decimal("0.001")),
            ],
        )
    )
    cost_model_create(
        "gpu-a",
        effective_from=MONTH - timedelta(days=1),
        electricity_per_kwh=Decimal("0.20"),
        gpu_cost_per_hour=Decimal("0.5"),
    )
    acme, tiny = account_make("premium").pk, account_make("free").pk
    records = []
    for day in range(10):
        at = MONTH + timedelta(days=day, hours=10)
        records.append(usage(at, account_id=acme, prompt=400_000, completion=30_000, energy=900.0))
        records.append(
            usage(at, account_id=tiny, tier="free", prompt=20_000, completion=100, energy=900.0)
        )
    usage_write(records)
    rollups_run(now=NEXT_MONTH + timedelta(hours=3))
    margins_run(now=NEXT_MONTH + timedelta(hours=3))
    return {"acme": acme, "tiny": tiny}


def report() -> FinanceReport:
    return finance_report(period_start=MONTH, top=None, now=NEXT_MONTH + timedelta(days=5))


def line(found: FinanceReport, dimension: str, key: int | str) -> Line:
    (item,) = [item for item in found.lines[dimension] if item.key == str(key)]
    return item


# 2. Day rows have their ratios ---------------------------------------------------------------


def test_the_csv_day_rows_carry_margin_percent_cost_per_million_and_tokens_per_kwh(
    month: dict[str, int],
) -> None:
    rows = list(csv.DictReader(io.StringIO(report_csv(report()))))

    days = {row["key"]: row for row in rows if row["dimension"] == "day"}
    assert len(days) == 31
    earning = [row for row in days.values() if row["revenue"] and Decimal(row["revenue"]) > 0]
    assert len(earning) == 10
    for row in earning:
        stored = Margin.objects.get(
            grain="day", dimension="backend", key="gpu-a", bucket=f"{row['key']}T00:00:00Z"
        )
        assert Decimal(row["margin_pct"]) == pytest.approx(stored.margin_pct, abs=Decimal("1e-4"))
        assert Decimal(row["tokens_per_kwh"]) == pytest.approx(stored.tokens_per_kwh)
        assert Decimal(row["cost_per_million_tokens"]) == pytest.approx(
            stored.cost_per_million_tokens
        )
        assert row["joules_per_token"] and Decimal(row["measured_token_share"]) == 1


# 3. Money keeps the precision its size needs ---------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        ("0.0026341", "USD", "0.002634"),
        ("0.00000012345", "USD", "0.0000001234"),  # half to even: ...345 -> ...34
        ("-0.0001235", "USD", "-0.0001235"),
        ("12.345", "USD", "12.34"),
        ("1234.565", "USD", "1,234.56"),
        ("0", "USD", "0.00"),
        ("0.5", "JPY", "0.5000"),
        ("123456", "JPY", "123,456"),
    ],
)
def test_money_is_shown_with_four_significant_digits_and_at_least_the_minor_unit(
    amount: str, currency: str, shown: str
) -> None:
    assert _money(Decimal(amount), currency) == shown


def test_a_sub_cent_energy_cost_is_not_shown_as_zero(month: dict[str, int]) -> None:
    found = report()

    energy = found.total.energy_cost
    assert 0 < energy < Decimal("0.005")
    shown = _money(energy, "USD")
    assert shown != "0.00" and Decimal(shown) == pytest.approx(energy, rel=Decimal("1e-3"))
    assert f"Energy cost</dt><dd>{shown}</dd>" in report_html(found)
    assert f"(: {shown})" in pdf_text(report_pdf(found))  # "Energy cost" bold, then this
    (total,) = [r for r in csv.DictReader(io.StringIO(report_csv(found))) if r["key"] == ""]
    assert Decimal(total["energy_cost"]) == energy  # the CSV keeps it unrounded


def test_the_csv_writes_zero_and_tiny_amounts_as_plain_decimals(month: dict[str, int]) -> None:
    text = report_csv(report())
    rows = list(csv.DictReader(io.StringIO(text)))

    cells = [cell for row in rows for cell in row.values() if cell]
    assert not [c for c in cells if re.fullmatch(r"-?[0-9.]+[eE][-+]?[0-9]+", c)]
    assert "0.000000000000" in cells  # a zero kept to its 12 places, not "0E-12"
    (free,) = [r for r in rows if (r["dimension"], r["key"]) == ("tier", "free")]
    assert Decimal(free["revenue"]) < Decimal("0.1")  # a tiny amount, written out in full
    assert free["revenue"] == format(line(report(), "tier", "free").revenue, "f")


# 4. Margin % only where it means something --------------------------------------------------


def test_margin_percent_is_na_where_revenue_is_negligible_and_the_margin_is_beside_it(
    month: dict[str, int],
) -> None:
    found = report()

    tiny, acme = line(found, "account", month["tiny"]), line(found, "account", month["acme"])
    assert tiny.margin_pct is not None and tiny.margin_pct < -100_000
    assert tiny.margin_pct_shown is None
    assert acme.margin_pct is not None and acme.margin_pct > 0
    assert acme.margin_pct_shown == acme.margin_pct
    html = report_html(found)
    accounts = html[html.index("<h2>By account</h2>") :]
    row = accounts[accounts.index(f"<td>{tiny.label}</td>") :].split("</tr>")[0]
    assert f"<td>{_money(tiny.margin, 'USD')}</td><td>n/a (negligible)</td>" in row
    assert f"{tiny.margin_pct:,.1f}%" not in html
    assert f"<td>{acme.margin_pct:,.1f}%</td>" in html
    assert "shown only where revenue is at least 10% of that cost" in html


# 9. A PDF that prints, charts that stay readable -----------------------------------------------


def test_every_pdf_page_is_numbered(month: dict[str, int]) -> None:
    text = pdf_text(report_pdf(report()))

    pages = text.count("page ")
    assert pages >= 3
    for n in range(1, pages + 1):
        assert f"page {n} of {pages}" in text


def test_chart_axis_text_prints_at_seven_points_or_more(month: dict[str, int]) -> None:
    half_page = (297 - 24 - 6) / 2 * 72 / 25.4  # two charts across landscape A4, in points

    for name, drawing in _charts(report()):
        factor = half_page / drawing.width
        for chart in drawing.contents:
            if hasattr(chart, "valueAxis"):
                assert chart.valueAxis.labels.fontSize * factor >= 7, name
                assert chart.categoryAxis.labels.fontSize * factor >= 7, name


def test_one_huge_key_does_not_flatten_the_others() -> None:
    drawing = charts.bars(
        title="Revenue by account",
        categories=["giant", "a", "b", "c"],
        series=[("revenue", [Decimal(100_000), Decimal(40), Decimal(25), Decimal(10)])],
    )

    (chart,) = [c for c in drawing.contents if isinstance(c, VerticalBarChart)]
    assert chart.data == [[52.0, 40.0, 25.0, 10.0]]  # the giant cut at 1.3 x the next
    assert chart.barLabelArray == [["100k", "", "", ""]]  # with its true value written on it
    assert chart.valueAxis.valueMax == 52.0
    ranking = charts.ranking(
        title="Top accounts", categories=["giant", "a"], values=[Decimal(9_000), Decimal(30)]
    )
    (bars,) = [c for c in ranking.contents if isinstance(c, HorizontalBarChart)]
    assert max(bars.data[0]) == 39.0
    assert bars.barLabelArray == [["30", "9k"]]


def test_keys_of_a_similar_size_are_drawn_as_they_are() -> None:
    drawing = charts.bars(
        title="Cost by backend",
        categories=["a", "b"],
        series=[("energy", [Decimal(3), Decimal(1)]), ("GPU", [Decimal(30), Decimal(10)])],
        stacked=True,
    )

    (chart,) = [c for c in drawing.contents if isinstance(c, VerticalBarChart)]
    assert chart.data == [[3.0, 1.0], [30.0, 10.0]]
    assert chart.barLabelArray is None
