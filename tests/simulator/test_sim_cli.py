from __future__ import annotations

import signal
import subprocess
import sys

from simulator.testing import http


def test_the_cli_serves_on_a_free_port_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator",
            "--port",
            "0",
            "--name",
            "cli",
            "--model",
            "a",
            "--model",
            "b",
            "--speedup",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split(" listening on ")[1].split()[0]
        models = http("GET", url + "/v1/models").json()
        stats = http("GET", url + "/_sim/stats").json()
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(10)

    assert [model["id"] for model in models["data"]] == ["a", "b"]
    assert stats["name"] == "cli"
    assert returncode == 0


def test_the_cli_rejects_a_negative_speedup() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "--speedup", "-1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2
    assert "speedup" in result.stderr
