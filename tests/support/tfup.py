"""`tf up` as a subprocess, started as `make up` starts it (the venv's `tf` script, no database
URLs in the environment: embedded PostgreSQL and Redis), on a free port and its own var dir."""

import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.support.servers import ROOT, free_port
from tests.support.waiting import wait_until

READY_TIMEOUT_SECONDS = 90
STOP_TIMEOUT_SECONDS = 30
TF = str(Path(sys.executable).parent / "tf")


class TfUp:
    """`tf up` as a subprocess, its output collected line by line."""

    def __init__(self, var_dir: Path, port: int) -> None:
        self.var_dir = var_dir
        self.port = port
        self.process = subprocess.Popen(
            [TF, "up", "--port", str(port), "--var-dir", str(var_dir)],
            cwd=ROOT,
            env=make_env(),
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
        def found() -> str | None:
            line = next((line for line in self.lines if line.startswith(prefix)), None)
            if line is None and self.process.poll() is not None:
                pytest.fail(f"exited, no line starting with {prefix!r}; output:\n" + self.output())
            return line

        return wait_until(
            found,
            timeout=timeout,
            interval=0.1,
            what=f"a line starting with {prefix!r}",
            explain=lambda: "output:\n" + self.output(),
        )

    def children(self, *, recursive: bool) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=recursive)

    def output(self) -> str:
        return "\n".join(self.lines[-200:])


def make_env() -> dict[str, str]:
    """The environment `make up` gives `tf`: this one's, less the test databases' URLs."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "TF_PROFILE": "local"}


@contextmanager
def tf_up_running(var_dir: Path) -> Iterator[TfUp]:
    """A `tf up`, stopped with Ctrl-C at the end if the test has not stopped it itself."""
    tf = TfUp(var_dir, free_port())
    try:
        yield tf
    finally:
        if tf.process.poll() is None:
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
