"""Which backend serves a request: enabled, healthy, serving the model, least outstanding.

The backend list is re-read from PostgreSQL every BACKENDS_REFRESH_SECONDS by a background
task. Health comes from two places: the prober's verdict in the table (`unhealthy` is skipped)
and this process's own experience: a circuit breaker per backend (gateway/breaker.py) that
opens on repeated failures across requests and stays open BACKEND_EJECT_SECONDS.
"""

import logging
import time
from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool
from yarl import URL

from gateway.breaker import Breaker
from gateway.validation import ENDPOINT_PATHS

log = logging.getLogger(__name__)

_BACKENDS_SQL = """
SELECT id, name, base_url, upstream_model, public_models, max_concurrent_sequences,
       supports_priority, health <> 'unhealthy'
FROM fleet_backend
WHERE enabled
ORDER BY name
"""


@dataclass(slots=True, eq=False)
class Backend:
    id: int
    name: str
    base_url: str
    upstream_model: str
    public_models: tuple[str, ...]
    max_concurrent_sequences: int
    supports_priority: bool = False
    # The prober's verdict; `unknown` (never probed) counts as healthy.
    healthy: bool = True
    outstanding: int = 0
    breaker: Breaker = field(default_factory=lambda: Breaker(0.0))
    # Bytes to swap in responses when the engine's model name differs from the public one.
    model_renames: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    # Parsed once: building a URL per request is measurable on the hot path.
    urls: dict[str, URL] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.urls = {name: URL(self.base_url + path) for name, path in ENDPOINT_PATHS.items()}
        for public in self.public_models:
            if public != self.upstream_model:
                self.model_renames[public] = (
                    f'"model":"{self.upstream_model}"'.encode(),
                    f'"model":"{public}"'.encode(),
                )


class Router:
    def __init__(self, pool: AsyncConnectionPool, *, eject_seconds: float) -> None:
        self.pool = pool
        self.eject_seconds = eject_seconds
        self._by_model: dict[str, list[Backend]] = {}
        self._by_name: dict[str, Backend] = {}

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def serves(self, model: str) -> bool:
        return model in self._by_model

    def candidates(self, model: str) -> list[Backend]:
        """Backends to try: healthy, breaker not open here, fewest requests outstanding first."""
        now = time.monotonic()
        backends = self._by_model.get(model, ())
        usable = (b for b in backends if b.healthy and b.breaker.available(now))
        return sorted(usable, key=lambda b: b.outstanding)

    def capacity(self, model: str) -> int:
        """Sequences the model's usable backends can run at once: what the queue hands out."""
        return sum(b.max_concurrent_sequences for b in self.candidates(model))

    def attempt(self, backend: Backend) -> None:
        backend.breaker.attempt(time.monotonic())

    def abandoned(self, backend: Backend) -> None:
        backend.breaker.abandon()

    def succeeded(self, backend: Backend) -> None:
        backend.breaker.success()

    def failed(self, backend: Backend) -> None:
        """A fault of the backend's (not the request's); enough of them open its breaker."""
        if backend.breaker.failure(time.monotonic()):
            log.warning(
                "backend breaker opened",
                extra={"backend": backend.name, "seconds": self.eject_seconds},
            )

    async def refresh(self) -> None:
        async with self.pool.connection(timeout=2.0) as conn:
            cursor = await conn.execute(_BACKENDS_SQL)
            rows = await cursor.fetchall()
        by_name: dict[str, Backend] = {}
        by_model: dict[str, list[Backend]] = {}
        for row in rows:
            backend = Backend(row[0], row[1], row[2], row[3], tuple(row[4]), row[5], row[6], row[7])
            backend.breaker.open_seconds = self.eject_seconds
            # Keep the object (and the live counters requests in flight decrement) if unchanged.
            known = self._by_name.get(backend.name)
            if known is not None and _same(known, backend):
                known.healthy = backend.healthy
                backend = known
            by_name[backend.name] = backend
            for model in backend.public_models:
                by_model.setdefault(model, []).append(backend)
        self._by_name, self._by_model = by_name, by_model


def _same(a: Backend, b: Backend) -> bool:
    fields = (
        "id",
        "base_url",
        "upstream_model",
        "public_models",
        "max_concurrent_sequences",
        "supports_priority",
    )
    return all(getattr(a, name) == getattr(b, name) for name in fields)
