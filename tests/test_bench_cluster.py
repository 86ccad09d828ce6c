"""The issue-21 benchmark (`python -m bench.cluster`) runs end to end at a tiny scale: the
gateway and the meters on one redis-server and on clusters of one and three primaries, each
figure printed, and the ledger holding every request and every event once (the figures are in
docs/benchmarks.md; timings are never asserted)."""

import re
import shutil

import pytest

from tests.support.bench import TINY_BACKLOG, bench_run

REDIS = ("single", "cluster 1+1", "cluster 3+3")


@pytest.mark.timeout(300)
@pytest.mark.skipif(
    shutil.which("hey") is None, reason="the bench's load generator: apt-get install hey"
)
def test_a_small_run_prints_every_figure_and_stores_everything_once() -> None:
    out = bench_run(
        "bench.cluster",
        "--gateways",
        "1",
        "--meters",
        "1",
        "--primaries",
        "1",
        "3",
        "--runs",
        "1",
        "--seconds",
        "1",
        *TINY_BACKLOG,
        database="test_bench_cluster",
    )
    for redis, shards in zip(REDIS, (1, 1, 3), strict=True):
        # The gateway's row: req/s, p50, p99, CPU per request, no errors.
        number = r"[\d,]+(?:\.\d+)?"
        row = rf"^{re.escape(redis)}\s+{shards}\s+1(?:\s+{number}){{5}}\s+0\s+([\d,]+)\s+([\d,]+)$"
        found = re.search(row, out, re.MULTILINE)
        assert found, f"no gateway row for {redis}:\n{out}"
        answered, rows = found.groups()
        assert answered == rows and int(answered.replace(",", "")) > 0
        assert f"1 gateway worker(s) on {redis}: the ledger holds exactly one row per" in out
        # The meters': every event stored once, and once still after 2,000 were sent again.
        assert f"1 meter(s) on {redis}: backlog of 2,000 events appended" in out
        assert (
            f"1 meter(s) on {redis}: the ledger holds exactly 2,000 rows (2,000 after 2,000 "
            "events were appended again; 0 quarantined)"
        ) in out
    for over, base in (
        ("cluster 1+1", "single"),
        ("cluster 3+3", "single"),
        ("cluster 3+3", "cluster 1+1"),
    ):
        pair = rf"{re.escape(over)} / {re.escape(base)}"
        ratio = r"\d+\.\d\d"
        gateway = rf"{pair}, 1 gateway worker\(s\): req/s {ratio}, p50 {ratio}, p99 {ratio}"
        assert re.search(gateway, out), out
        assert re.search(rf"{pair}, 1 meter\(s\): records/s {ratio}", out), out
