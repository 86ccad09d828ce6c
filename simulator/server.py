"""Ways to serve a simulator: in the current loop, or on a background thread for sync callers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from simulator.app import build_app
from simulator.config import SimConfig
from simulator.state import SIM, Simulator
from simulator.testing import http

# Streams a test leaves stalled must not hold a shutdown for aiohttp's default minute.
_SHUTDOWN_TIMEOUT = 2.0


async def start(config: SimConfig) -> tuple[web.AppRunner, str]:
    """Start serving in the running loop; returns the runner (to clean up) and the base URL."""
    runner = web.AppRunner(build_app(config), shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=2048)
    await site.start()
    host, port = runner.addresses[0][:2]
    if ":" in host:
        host = f"[{host}]"
    return runner, f"http://{host}:{port}"


async def serve(config: SimConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until cancelled; on_ready gets the base URL once the port is bound."""
    runner, url = await start(config)
    try:
        if on_ready is not None:
            on_ready(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class SimServer:
    """A simulator on its own event loop in a daemon thread, for tests and sync tools.

    with SimServer(SimConfig(port=0, speedup=0)) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="unused")
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI SDK's base_url for this server."""
        return f"{self.url}/v1"

    @property
    def sim(self) -> Simulator:
        """The live state; read it only while no request is in flight (it is not thread-safe)."""
        assert self._runner is not None
        return self._runner.app[SIM]

    def arm_fault(self, **spec: Any) -> None:
        """Arm a fault as POST /_sim/faults would, e.g. arm_fault(kind="status", status=503)."""
        self._call("POST", "/_sim/faults", spec)

    def stats(self, recent: int = 0) -> dict[str, Any]:
        """GET /_sim/stats, with the last `recent` request bodies and headers."""
        result: dict[str, Any] = self._call("GET", f"/_sim/stats?recent={recent}")
        return result

    def energy(self, ids: list[str] | None = None) -> dict[str, Any]:
        """GET /_sim/energy: ground truth (total, idle, per GPU, per request id)."""
        query = "" if ids is None else "?ids=" + ",".join(ids)
        result: dict[str, Any] = self._call("GET", f"/_sim/energy{query}")
        return result

    def reset_energy_counters(self) -> None:
        """Zero the exported DCGM counters, as a driver restart would; ground truth is kept."""
        self._call("POST", "/_sim/faults", {"energy_counter_reset": True})

    def reset(self) -> None:
        """Clear armed faults and zero the stats, e.g. between tests."""
        self._call("DELETE", "/_sim/faults")
        self._call("DELETE", "/_sim/stats")

    def _call(self, method: str, path: str, payload: object = None) -> Any:
        body = None if payload is None else orjson.dumps(payload)
        result = http(method, self.url + path, body)
        if result.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {result.status} {result.body!r}")
        return result.json()

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.config.name}")
        self._thread.daemon = True
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._runner, self.url = loop.run_until_complete(start(self.config))
        except BaseException as exc:  # handed to the starting thread, which re-raises it
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()
