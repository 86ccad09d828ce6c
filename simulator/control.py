"""Operational endpoints: health, model list, metrics, and the /_sim control plane for tests."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from simulator import dcgm
from simulator.errors import ApiError
from simulator.parsing import read_json
from simulator.state import SIM


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    status = request.app[SIM].faults.health_status
    return web.Response(status=status or 200)


async def models(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    sim.stats.received(request)
    data = [
        {
            "id": model,
            "object": "model",
            "created": sim.started_at,
            "owned_by": "vllm",
            "root": model,
            "parent": None,
            "max_model_len": sim.config.max_model_len,
        }
        for model in sim.config.models
    ]
    return _json({"object": "list", "data": data})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SIM].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def dcgm_metrics(request: web.Request) -> web.Response:
    """The GPUs as NVIDIA's dcgm-exporter shows them (power gauge, energy counter)."""
    power = request.app[SIM].power
    body = dcgm.render(power.readings(), power.hostname)
    return web.Response(body=body, headers={"Content-Type": dcgm.CONTENT_TYPE})


async def energy(request: web.Request) -> web.Response:
    """Ground truth: total, idle and per-GPU joules, and each request's; ?ids=a,b to filter."""
    ids = request.query.get("ids")
    selected = None if ids is None else [key for key in ids.split(",") if key]
    return _json(request.app[SIM].power.snapshot(selected))


async def arm_fault(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    try:
        spec = await read_json(request)
        if isinstance(spec, dict) and "energy_counter_reset" in spec:
            # Not a per-request fault: it happens now, to the exported counters only.
            if spec["energy_counter_reset"] is not True or len(spec) != 1:
                raise ValueError("'energy_counter_reset' must be true and alone")
            sim.power.reset_counters()
        else:
            sim.faults.arm(spec)
    except ApiError as exc:
        return exc.response()
    except ValueError as exc:
        return ApiError(400, str(exc)).response()
    return _json({**sim.faults.describe(), "energy_counter_resets": sim.power.counter_resets})


async def list_faults(request: web.Request) -> web.Response:
    return _json(request.app[SIM].faults.describe())


async def clear_faults(request: web.Request) -> web.Response:
    faults = request.app[SIM].faults
    faults.clear()
    return _json(faults.describe())


async def stats(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    try:
        recent = int(request.query.get("recent", "0"))
    except ValueError:
        return ApiError(400, "'recent' must be an integer.", param="recent").response()
    payload: dict[str, Any] = {"name": sim.config.name, **sim.stats.snapshot(recent)}
    payload["engines"] = {
        model: {"running": engine.num_running, "waiting": engine.num_waiting}
        for model, engine in sim.engines.items()
    }
    return _json(payload)


async def reset_stats(request: web.Request) -> web.Response:
    request.app[SIM].stats.reset()
    return _json({})
