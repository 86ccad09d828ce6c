"""The aiohttp application: routes plus the engine loops' lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from simulator import api, control
from simulator.config import SimConfig
from simulator.state import SIM, Simulator

_MAX_BODY = 64 * 1024 * 1024


async def _engines(app: web.Application) -> AsyncIterator[None]:
    engines = app[SIM].engines.values()
    for engine in engines:
        engine.start()
    yield
    for engine in engines:
        await engine.stop()


def build_app(config: SimConfig) -> web.Application:
    """A ready-to-run simulator; serve it with any aiohttp runner (see simulator.server)."""
    app = web.Application(
        client_max_size=_MAX_BODY,
        handler_args={
            # Cancelling the handler when the client hangs up is how a waiting non-streaming
            # request learns to abort its sequence, whichever runner serves the app.
            "handler_cancellation": True,
            "access_log": None,
        },
    )
    app[SIM] = Simulator(config)
    app.cleanup_ctx.append(_engines)
    router = app.router
    router.add_post("/v1/chat/completions", api.chat_completions)
    router.add_post("/v1/completions", api.completions)
    router.add_post("/v1/embeddings", api.embeddings)
    router.add_get("/v1/models", control.models)
    router.add_get("/health", control.health)
    router.add_get("/metrics", control.metrics)
    router.add_get("/dcgm/metrics", control.dcgm_metrics)
    router.add_post("/_sim/faults", control.arm_fault)
    router.add_get("/_sim/faults", control.list_faults)
    router.add_delete("/_sim/faults", control.clear_faults)
    router.add_get("/_sim/stats", control.stats)
    router.add_delete("/_sim/stats", control.reset_stats)
    router.add_get("/_sim/energy", control.energy)
    return app
