"""The billing benchmark's command runs end to end at a tiny scale (the figures are in
docs/benchmarks.md; timings are never asserted)."""

import pytest

from tests.support.bench import bench_run


@pytest.mark.timeout(300)
def test_a_small_run_times_every_job_and_its_checks_hold() -> None:
    out = bench_run(
        "bench.billing",
        "--records",
        "20000",
        "--accounts",
        "50",
        database="test_bench_billing",
    )
    phases = (
        "rollups, whole month",
        "rollups, one hour",
        "margins",
        "close (invoices)",
        "finance report, HTML",
        "close, from the records",
        "rollups, rebuilt",
    )
    for phase in phases:
        assert f"\n{phase} " in out
    assert "rollups after one more hour: identical; rebuilt: identical" in out
    assert "invoices from the rollups vs the raw records: 50 invoices, 0 differ" in out
