"""A simulated GPU inference backend (vLLM-like) speaking the OpenAI HTTP API."""

from simulator.app import build_app
from simulator.config import SimConfig, TimingModel
from simulator.engine import EngineObserver, Sequence, Step
from simulator.server import SimServer, serve, start

__all__ = [
    "EngineObserver",
    "Sequence",
    "SimConfig",
    "SimServer",
    "Step",
    "TimingModel",
    "build_app",
    "serve",
    "start",
]
