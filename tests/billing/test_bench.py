"""The billing benchmark's command runs end to end at a tiny scale (the figures are in
docs/benchmarks.md; timings are never asserted)."""

import os
import subprocess
import sys

import pytest
from django.conf import settings

from tests.support.servers import ROOT


@pytest.mark.timeout(300)
def test_a_small_run_times_every_job_and_the_second_run_changes_nothing() -> None:
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
    for phase in ("rollups", "margins", "invoices", "rollups, again", "invoices, again"):
        assert f"\n{phase} " in out
    assert out.count("after the second run: identical") == 3
    assert "CHANGED" not in out
