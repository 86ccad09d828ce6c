"""Real server processes for integration tests: simulated backends and gateways."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A child process serving HTTP on 127.0.0.1:port, ready once `ready_path` answers 200."""

    def __init__(self, args: list[str], *, port: int, ready_path: str, env: dict[str, str]):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(ROOT / "var" / f"test-{port}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            args, cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait_ready(ready_path)

    def _wait_ready(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args} exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.process.args} not ready after {timeout}s")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine or the OOM killer takes it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def start_simulator(*extra: str) -> Server:
    port = free_port()
    args = [sys.executable, "-m", "simulator", "--port", str(port), *extra]
    return Server(args, port=port, ready_path="/health", env={})


def start_gateway(env: dict[str, str], *, workers: int = 1) -> Server:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--lifespan",
        "on",
        "--no-access-log",
        # As production runs it: X-Forwarded-For believed only from TRUSTED_PROXIES.
        "--forwarded-allow-ips",
        env.get("TRUSTED_PROXIES", ""),
    ]
    return Server(args, port=port, ready_path="/readyz", env=env)
