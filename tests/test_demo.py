"""`tf demo` against a fresh `tf up`, as a new user runs it: within a minute the month's
finance report shows revenue, cost and margin per tier and an honest tokens per kWh."""

import csv
import io
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

from billing.reports import _CSV_HEADER
from config import demo as demo_traffic
from tests.tfup import READY_TIMEOUT_SECONDS, TF, make_env, tf_up_running

DEMO_SECONDS = 20
# ML.ENERGY's Llama-3.1-8B on one H100: roughly 2-13 tokens per joule, 7.2-46.8M per kWh.
TOKENS_PER_KWH = (7_000_000, 47_000_000)


def tf(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TF, *args], env=make_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


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
