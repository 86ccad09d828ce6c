"""Bearer-key authentication with a short-lived per-process cache.

A key's row is read from PostgreSQL at most once per KEY_CACHE_SECONDS per process (misses
for the same key share one query), so revocation reaches every gateway within that time while
the hot path does no database round trip. `last_used_at` is written in the background, at
most once a minute per key and process.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.errors import account_inactive, invalid_api_key, unavailable
from gateway.keys import key_id_parse, key_matches
from gateway.limits import Limits
from gateway.pricing import Budget

log = logging.getLogger(__name__)

_LAST_USED_EVERY = 60.0
_CACHE_MAX = 100_000
_DB_TIMEOUT = 2.0
_KEY_SQL = """
SELECT k.id, k.secret_hash, k.expires_at, k.revoked_at, a.id, a.status, t.slug, t.priority,
       t.allowed_models,
       coalesce(o.requests_per_minute, t.requests_per_minute),
       coalesce(o.tokens_per_minute, t.tokens_per_minute),
       coalesce(o.tokens_per_day, t.tokens_per_day),
       coalesce(o.tokens_per_month, t.tokens_per_month),
       coalesce(o.max_concurrent_requests, t.max_concurrent_requests),
       coalesce(o.max_tokens_per_request, t.max_tokens_per_request),
       coalesce(o.max_context_tokens, t.max_context_tokens),
       t.queue_timeout_seconds, t.queue_depth, t.when_redis_down = 'open',
       b.monthly_limit, b.currency, b.hard_cap
FROM gateway_apikey k
JOIN gateway_account a ON a.id = k.account_id
JOIN gateway_tier t ON t.id = a.tier_id
LEFT JOIN gateway_limitoverride o ON o.account_id = a.id
LEFT JOIN billing_budget b ON b.account_id = a.id
WHERE k.key_id = %s
"""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: everything the hot path needs about a key, its account and its tier."""

    api_key_id: int
    account_id: int
    tier: str
    priority: int
    allowed_models: frozenset[str]
    limits: Limits
    # How long a request may wait for a backend slot, and how many may wait in its class.
    queue_timeout: float
    queue_depth: int | None
    # Served under the local cap, metered through the spool, while Redis is unreachable.
    fail_open: bool
    # The account's monthly budget (billing.models.Budget), if it has one, and the currency
    # its requests are priced in: the budget's, else billing's.
    budget: Budget | None
    currency: str
    secret_hash: str
    expires_at: datetime | None
    revoked: bool
    active: bool

    def may_use(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


@dataclass(slots=True)
class _Entry:
    principal: Principal | None
    fresh_until: float
    last_used_written: float = 0.0


class Authenticator:
    def __init__(self, pool: AsyncConnectionPool, *, cache_seconds: float, currency: str) -> None:
        self.pool = pool
        self.cache_seconds = cache_seconds
        self.currency = currency
        self._cache: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Future[_Entry]] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def authenticate(self, authorization: bytes | None) -> Principal:
        if not authorization or not authorization.startswith(b"Bearer "):
            raise invalid_api_key(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
            )
        plaintext = authorization[7:].strip().decode("latin-1")
        key_id = key_id_parse(plaintext)
        if key_id is None:
            raise invalid_api_key("Incorrect API key provided.")
        entry = await self._entry(key_id)
        principal = entry.principal
        if principal is None or not key_matches(plaintext, principal.secret_hash):
            raise invalid_api_key("Incorrect API key provided.")
        if principal.revoked:
            raise invalid_api_key("This API key has been revoked.")
        if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
            raise invalid_api_key("This API key has expired.")
        if not principal.active:
            raise account_inactive()
        self._note_use(entry, principal.api_key_id)
        return principal

    async def _entry(self, key_id: str) -> _Entry:
        entry = self._cache.get(key_id)
        if entry is not None and entry.fresh_until > time.monotonic():
            return entry
        if (pending := self._loading.get(key_id)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._loading[key_id] = future
        try:
            loaded = await self._refreshed(key_id, entry)
            self._cache[key_id] = loaded
            future.set_result(loaded)
            return loaded
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._loading[key_id]

    async def _refreshed(self, key_id: str, stale: _Entry | None) -> _Entry:
        try:
            principal = await self._load(key_id)
        except (psycopg.Error, PoolTimeout) as exc:
            # PostgreSQL is away: keys seen recently keep working (revocations made during
            # the outage apply once it is back); keys never seen cannot be checked.
            if stale is None:
                log.warning("key lookup failed and the key is not cached", exc_info=True)
                raise unavailable(
                    "Authentication is temporarily unavailable; retry shortly.",
                    code="auth_unavailable",
                    retry_after="2",
                ) from exc
            log.warning("key lookup failed; using the cached entry", exc_info=True)
            stale.fresh_until = time.monotonic() + 1.0
            return stale
        self._evict_expired()
        fresh = _Entry(principal, time.monotonic() + self.cache_seconds)
        if stale is not None:
            fresh.last_used_written = stale.last_used_written
        return fresh

    def _evict_expired(self) -> None:
        """Bound the cache: well-formed but unknown keys would otherwise pile up."""
        if len(self._cache) < _CACHE_MAX:
            return
        now = time.monotonic()
        self._cache = {k: e for k, e in self._cache.items() if e.fresh_until > now}

    async def _load(self, key_id: str) -> Principal | None:
        async with self.pool.connection(timeout=_DB_TIMEOUT) as conn:
            cursor = await conn.execute(_KEY_SQL, (key_id,))
            row = await cursor.fetchone()
        if row is None:
            return None
        return Principal(
            api_key_id=row[0],
            secret_hash=row[1],
            expires_at=row[2],
            revoked=row[3] is not None,
            account_id=row[4],
            active=row[5] == "active",
            tier=row[6],
            priority=row[7],
            allowed_models=frozenset(row[8]),
            limits=Limits(*row[9:16]),
            queue_timeout=row[16],
            queue_depth=row[17],
            fail_open=row[18],
            budget=None if row[19] is None else Budget(row[19], row[20], row[21]),
            currency=self.currency if row[19] is None else row[20],
        )

    def _note_use(self, entry: _Entry, api_key_id: int) -> None:
        now = time.monotonic()
        if now - entry.last_used_written < _LAST_USED_EVERY:
            return
        entry.last_used_written = now
        task = asyncio.create_task(self._write_last_used(api_key_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_last_used(self, api_key_id: int) -> None:
        try:
            async with self.pool.connection(timeout=_DB_TIMEOUT) as conn:
                await conn.execute(
                    "UPDATE gateway_apikey SET last_used_at = now() WHERE id = %s", (api_key_id,)
                )
        except Exception:
            log.warning("could not record last use of key %s", api_key_id, exc_info=True)
