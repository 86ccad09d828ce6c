"""The billing benchmark's command runs end to end at a tiny scale (the figures are in
docs/benchmarks.md; timings are never asserted)."""

import os
import subprocess
import sys

import pytest
from django.conf import settings

from tests.support.servers import ROOT


@pytest.mark.timeout(300)
def test_a_small_run_times_every_job_and_its_checks_hold() -> None:
    db = settings.DATABASES["default"]
    server = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}"
    env = {
        **os.environ,
        "TF_PROFILE": "local",
        "DATABASE_URL": f"{server}/postgres",
        "LOG_LEVEL": "WARNING",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.billing",
            "--records",
            "20000",
            "--accounts",
            "50",
            "--database",
            f"test_bench_billing_{os.getpid()}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )

    out = result.stdout
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
