"""Real server processes for integration tests: simulated backends and gateways."""

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from django.conf import settings

from bench.ports import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent.parent


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
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args} exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as response:  # noqa: S310
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        try:
            wait_until(ready, timeout=timeout, what=f"{self.url}{path} to answer 200")
        except AssertionError as error:
            self.stop()
            raise RuntimeError(f"{self.process.args} not ready: see {self.log.name}") from error

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


def gateway_env() -> dict[str, str]:
    """The environment of a gateway (or meter) process on the test database and Redis, with
    the short periods of tests."""
    db = settings.DATABASES["default"]
    return {
        "TF_PROFILE": "local",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "GATEWAY_KEY_CACHE_SECONDS": "1",
        "GATEWAY_BACKENDS_REFRESH_SECONDS": "0.5",
        "GATEWAY_BACKEND_EJECT_SECONDS": "1",
        "GATEWAY_LEASE_SECONDS": "3",
        "GATEWAY_REAPER_INTERVAL_SECONDS": "0.5",
        "GATEWAY_MAX_BODY_BYTES": "65536",
        "LOG_LEVEL": "WARNING",
    }


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
