"""The optional real-GPU check (bench.gpu_check), run here against a stand-in for NVML.

No GPU is on this machine, so NVML is replaced by a GPU whose counter and gauge follow one
known power draw; the DCGM page the check scrapes is served over HTTP from the same GPU, with
its counter running fast when a test wants the check to catch a collector that is off.
"""

import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import gpu_check

WATTS = 300.0
UUIDS = ["GPU-5a1c0ffe-0000-4000-8000-000000000001", "GPU-5a1c0ffe-0000-4000-8000-000000000002"]


class _Nvml(types.ModuleType):
    """NVML's calls the check makes, for GPUs drawing WATTS since `start`."""

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.start = time.monotonic()

    def energy_mj(self, fast: float = 1.0) -> int:
        return round((time.monotonic() - self.start) * WATTS * 1000 * fast) + 10**9

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return len(UUIDS)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return UUIDS[handle].encode()

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return self.energy_mj()

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return round(WATTS * 1000)


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> _Nvml:
    module = _Nvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def _dcgm_page(nvml: _Nvml, fast: float) -> bytes:
    lines = ["# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter"]
    for index, uuid in enumerate(UUIDS):
        labels = f'gpu="{index}",UUID="{uuid}",modelName="NVIDIA H100 80GB HBM3",Hostname="h"'
        lines.append(f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels}}} {nvml.energy_mj(fast)}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def dcgm(nvml: _Nvml) -> Iterator[tuple[str, dict[str, float]]]:
    """A DCGM exporter URL, and the factor its counters run at (1.0: in step with NVML)."""
    speed = {"fast": 1.0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = _dcgm_page(nvml, speed["fast"])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None: ...

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/metrics", speed
    server.shutdown()
    server.server_close()


def _run(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["gpu_check", "--seconds", "1", "--scrape", "0.25", *args])
    return gpu_check.main()


def test_the_check_passes_when_counter_gauge_and_collector_agree(
    nvml: _Nvml,
    dcgm: tuple[str, dict[str, float]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _run(monkeypatch, "--dcgm", dcgm[0], "--hz", "100") == 0
    out = capsys.readouterr().out
    assert "2 GPU(s)" in out
    assert "worst collector difference from the counter" in out
    # Each GPU drew 300 W for about a second; the counter says so.
    rows = [line.split() for line in out.splitlines() if line.startswith("NVIDIA")]
    assert len(rows) == 2
    for row in rows:
        counter_j = float(row[-5].replace(",", ""))
        assert 250 < counter_j < 400


def test_the_check_fails_when_the_collector_reads_more_than_the_gpu_used(
    nvml: _Nvml,
    dcgm: tuple[str, dict[str, float]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, speed = dcgm
    speed["fast"] = 1.2
    assert _run(monkeypatch, "--dcgm", url) == 1
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("NV")]
    assert [15 < float(row[-1].rstrip("%")) < 25 for row in rows] == [True, True]


def test_without_nvml_installed_it_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert _run(monkeypatch) == 2
    assert "pip install -e '.[gpu]'" in capsys.readouterr().err
