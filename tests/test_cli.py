"""`tf up` end to end (embedded PostgreSQL and Redis, every service, a real call, a clean stop),
and the demo data it seeds on every start."""

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest

from gateway.keys import key_id_parse
from gateway.models import ApiKey, Backend
from gateway.services import demo_seed
from tests.servers import ROOT, free_port

READY_TIMEOUT_SECONDS = 90
STOP_TIMEOUT_SECONDS = 30


class TfUp:
    """`python -m config.cli up` as a subprocess, its output collected line by line."""

    def __init__(self, var_dir: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "config.cli", "up", "--port", str(port)],
            cwd=ROOT,
            env={**env, "TF_VAR_DIR": str(var_dir)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        # Read all along: a full pipe would block tf up's own output.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in self.lines if line.startswith(prefix)), None)
            if found is not None:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"no line starting with {prefix!r}; output:\n" + self.output())

    def children(self, *, recursive: bool) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=recursive)

    def output(self) -> str:
        return "\n".join(self.lines[-200:])


@pytest.fixture
def tf_up(tmp_path: Path) -> Iterator[TfUp]:
    tf = TfUp(tmp_path, free_port())
    yield tf
    if tf.process.poll() is None:  # the test failed before stopping it
        tf.process.send_signal(signal.SIGINT)
        try:
            tf.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            tf.process.kill()


def curl_parse(line: str) -> tuple[str, str]:
    """The OpenAI base URL and the API key of the printed curl line."""
    argv = shlex.split(line)
    authorization = next(arg for arg in argv if arg.startswith("Authorization: Bearer "))
    return (
        argv[1].removesuffix("/chat/completions"),
        authorization.removeprefix("Authorization: Bearer "),
    )


def processes_using(path: Path) -> list[psutil.Process]:
    """The embedded PostgreSQL and Redis are found by their data directory, named in argv."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(path) in arg for arg in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_it_serves_a_completion_and_stops_everything_on_ctrl_c(tf_up: TfUp, tmp_path: Path) -> None:
    curl = tf_up.wait_for_line("curl ", READY_TIMEOUT_SECONDS)
    base_url, api_key = curl_parse(curl)

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    completion = client.chat.completions.create(
        model="llama-3.1-8b-instruct",
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=16,
    )
    children = tf_up.children(recursive=False)
    descendants = tf_up.children(recursive=True)
    tf_up.process.send_signal(signal.SIGINT)
    exit_code = tf_up.process.wait(STOP_TIMEOUT_SECONDS)

    assert completion.model == "llama-3.1-8b-instruct"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert 1 <= completion.usage.completion_tokens <= 16
    assert exit_code == 0, tf_up.output()
    # redis, sim-a, sim-b, meter, worker, beat and gateway, with their own children below them
    assert len(children) == 7
    assert [process for process in descendants if process.is_running()] == []
    assert processes_using(tmp_path) == []
    assert not (tmp_path / "pg" / "postmaster.pid").exists()


@pytest.mark.django_db
def test_seeding_again_issues_new_keys_and_revokes_the_earlier_ones() -> None:
    urls = {"sim-a": "http://127.0.0.1:9101", "sim-b": "http://127.0.0.1:9102/"}
    first = demo_seed(backend_urls=urls)
    second = demo_seed(backend_urls=urls)

    assert [(key.account, key.tier) for key in second] == [
        ("acme-research", "premium"),
        ("hobbyist", "free"),
    ]
    demo_keys = ApiKey.objects.filter(name="tf-up", account__name__in=["acme-research", "hobbyist"])
    live = {key.key_id for key in demo_keys if key.revoked_at is None}
    revoked = {key.key_id for key in demo_keys if key.revoked_at is not None}
    assert live == {key_id_parse(key.plaintext) for key in second}
    assert revoked == {key_id_parse(key.plaintext) for key in first}
    sim_b = Backend.objects.get(name="sim-b")
    assert (sim_b.base_url, sim_b.telemetry_url) == (
        "http://127.0.0.1:9102",
        "http://127.0.0.1:9102/dcgm/metrics",
    )
    assert sim_b.public_models == ["llama-3.1-8b-instruct"]
