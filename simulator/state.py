"""The per-server state every handler shares, reachable as request.app[SIM]."""

from __future__ import annotations

import itertools
import secrets
import time

from aiohttp import web

from simulator.config import SimConfig
from simulator.engine import Engine
from simulator.faults import Faults
from simulator.metrics import Metrics
from simulator.power import Power
from simulator.stats import Stats
from simulator.textgen import TextGen


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.started_at = int(time.time())
        self.textgen = TextGen(config.seed)
        self.engines = {model: Engine(model=model, config=config) for model in config.models}
        self.faults = Faults()
        self.stats = Stats()
        self.metrics = Metrics(self.engines, speedup=config.speedup)
        for engine in self.engines.values():
            engine.add_observer(self.stats)
            engine.add_observer(self.metrics)
        self.power = Power(config, self.engines)
        # A random process prefix plus a counter: unique ids without a uuid4 per request.
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count()

    def new_id(self, kind: str) -> str:
        return f"{kind}-{self._id_prefix}{next(self._ids):010x}"


SIM = web.AppKey("simulator", Simulator)
