"""`tf demo` against a fresh `tf up`, as a new user runs it: within a minute the month's
finance report and the console's dashboard show revenue, cost and margin per tier and an
honest tokens per kWh with its coverage (screenshots in var/artifacts/screenshots/)."""

import csv
import io
import re
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from billing.report_forms import _CSV_HEADER
from config import demo as demo_traffic
from tests.support.browser import PASSWORD, chromium, shot, sign_in
from tests.support.tfup import READY_TIMEOUT_SECONDS, TF, make_env, tf_up_running

DEMO_SECONDS = 20
# ML.ENERGY's Llama-3.1-8B on one H100: roughly 2-13 tokens per joule, 7.2-46.8M per kWh.
TOKENS_PER_KWH = (7_000_000, 47_000_000)


def tf(
    *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TF, *args],
        env={**make_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dashboard_month(browser: WebDriver, url: str) -> tuple[str, dict[str, dict[str, str]]]:
    """The dashboard's month card: its summary line and its table by tier, cell by header,
    read in one script (the page redraws it every few seconds)."""
    browser.get(url + "/admin/dashboard/")
    read = """
        const texts = (s) => [...document.querySelectorAll(s)].map(e => e.textContent);
        return [document.getElementById("month-summary").textContent, texts("#table-month th"),
                [...document.querySelectorAll("#table-month tbody tr")].map(
                    row => [...row.querySelectorAll("td")].map(cell => cell.textContent))];
    """
    WebDriverWait(browser, 15).until(lambda b: len(b.execute_script(read)[2]) > 1)
    summary, header, rows = browser.execute_script(read)
    table = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    return summary, table


def amount(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


@pytest.mark.timeout(READY_TIMEOUT_SECONDS + 300)
def test_the_demo_shows_revenue_cost_margin_per_tier_and_tokens_per_kwh(tmp_path: Path) -> None:
    with tf_up_running(tmp_path) as instance:
        instance.wait_for_line("curl ", READY_TIMEOUT_SECONDS)
        var_dir = ("--var-dir", str(instance.var_dir))

        demo = tf("demo", "--seconds", str(DEMO_SECONDS), *var_dir, timeout=240)
        period = time.strftime("%Y-%m", time.gmtime())
        report = tf(
            "manage",
            *var_dir,
            *("finance_report", "--period", period, "--format", "csv", "--output", "-"),
            timeout=60,
        )
        staff = tf(
            *("manage", *var_dir, "createsuperuser", "--noinput", "--username", "demo-staff"),
            *("--email", "staff@example.com"),
            env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
            timeout=60,
        )
        assert staff.returncode == 0, staff.stderr
        url = f"http://127.0.0.1:{instance.port}"
        with chromium() as browser:
            sign_in(browser, url, "demo-staff")
            summary, by_tier = dashboard_month(browser, url)
            shot(browser, "demo-dashboard")
            browser.get(f"{url}/billing/report/{period}.html")
            report_page = browser.find_element(By.TAG_NAME, "body").text
            shot(browser, "demo-finance-report")

    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"Finance report {period} so far (USD):" in demo.stdout
    assert "Energy measured for " in demo.stdout
    assert report.returncode == 0, report.stderr
    rows = {
        (row["dimension"], row["key"]): row for row in csv.DictReader(io.StringIO(report.stdout))
    }
    for tier in ("premium", "interactive", "free"):
        row = rows[("tier", tier)]
        assert row["revenue"] != "", f"{tier} is unpriced"
        assert Decimal(row["cost"]) > 0, tier
        assert Decimal(row["margin"]) != 0, tier
        assert int(row["unpriced_tokens"]) == 0, tier
    assert Decimal(rows[("tier", "premium")]["revenue"]) > 0
    assert Decimal(rows[("tier", "interactive")]["revenue"]) > 0
    # The free tier is an included quota at zero price: priced, worth nothing.
    assert Decimal(rows[("tier", "free")]["revenue"]) == 0
    total = rows[("total", "")]
    share = Decimal(total["measured_token_share"])
    assert 0 < share <= 1
    low, high = TOKENS_PER_KWH
    assert low <= Decimal(total["tokens_per_kwh"]) <= high, (total, demo.stdout)

    # The dashboard shows the same month, as staff see it, to the cent (the free tier's few
    # hundred tokens cost less than one).
    for tier in ("premium", "interactive"):
        cells = by_tier[tier]
        assert amount(cells["revenue"]) > 0, cells
        assert amount(cells["energy cost"]) + amount(cells["GPU cost"]) > 0, cells
        assert amount(cells["margin"]) != 0, cells
    assert by_tier["free"]["revenue"] == "0.00" and amount(by_tier["free"]["tokens"]) > 0
    for tier in ("premium", "interactive", "free", "total"):
        assert re.fullmatch(
            r"[\d.]+% · [\d.]+%", by_tier[tier]["energy measured (tokens · requests)"]
        )
    shown = re.search(r"Tokens per kWh: ([\d,]+)", summary)
    assert shown and low <= amount(shown[1]) <= high, summary
    assert re.search(r"Energy measured: [\d.]+% of tokens, [\d.]+% of requests", summary), summary
    assert f"Finance report {period}\n" in report_page and "amounts in USD" in report_page
    assert "Tokens per kWh" in report_page and "Energy measured" in report_page


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000/v1", "https://api.example.com/v1"])
def test_it_sends_nothing_to_a_gateway_off_this_machine(url: str) -> None:
    with pytest.raises(SystemExit, match="only runs locally"):
        demo_traffic.traffic_run(
            base_url=url, keys={}, model="m", seconds=1, tally=demo_traffic.Tally()
        )


def test_its_summary_shows_unpriced_usage_as_unpriced() -> None:
    header = ",".join(_CSV_HEADER)
    rows = [
        "2026-12,USD,total,,total,1000,0.001,,0.1,0.2,0.3,,,,20000000,10,9,900,1000,10,1000,0.9,0.9,1,,,",
        "2026-12,USD,tier,premium,premium,1000,0.001,,0.1,0.2,0.3,,,,20000000,10,9,900,1000,10,1000,0.9,0.9,1,,,",
    ]

    lines = demo_traffic.report_lines("\n".join([header, *rows]), "2026-12")

    assert lines[0] == "Finance report 2026-12 so far (USD):"
    assert lines[2].split() == [
        "premium",
        "1,000",
        "unpriced",
        "0.3000",
        "unpriced",
        "20,000,000",
        "90.0%",
    ]
    assert "Unpriced tokens: 1,000." in lines[-1]
