"""Bearer-key authentication with a short-lived per-process cache.

A key's row is read from PostgreSQL at most once per KEY_CACHE_SECONDS per process (misses
for the same key share one query), so revocation reaches every gateway within that time while
the hot path does no database round trip. While PostgreSQL is away, keys seen within
KEY_STALE_SECONDS are served from the cache without waiting for the failing lookup
(stale-while-revalidate; revocations made meanwhile apply once it is back); keys never seen,
or seen too long ago, get a 503. `last_used_at` is written in the background, at most once a
minute per key and process.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from customers.keys import key_id_parse, key_matches, key_refusal
from customers.models import LIMIT_FIELDS
from gateway.errors import ApiError, account_inactive, invalid_api_key, unavailable
from gateway.limits import Limits
from gateway.pricing import DEFAULT_CURRENCY, Budget

log = logging.getLogger(__name__)

_LAST_USED_EVERY = 60.0
_CACHE_MAX = 100_000
_DB_TIMEOUT = 2.0
_REFUSED = {
    "revoked": "This API key has been revoked.",
    "expired": "This API key has expired.",
}
# How long a request with an expired entry waits for its lookup while PostgreSQL answers
# (a lookup takes a millisecond); past it the request is served the entry it has.
_LOOKUP_PATIENCE = 0.2
# The override's limits, else the tier's, in the order of `Limits` (names from the code only);
# then the key's project: its own limits (null: as the account) and budget.
_KEY_SQL = f"""
SELECT k.id, k.secret_hash, k.expires_at, k.revoked_at, a.id, a.status, t.slug, t.priority,
       t.allowed_models,
       {", ".join(f"coalesce(o.{name}, t.{name})" for name in LIMIT_FIELDS)},
       t.queue_timeout_seconds, t.queue_depth, t.when_redis_down = 'open',
       b.monthly_limit, b.currency, b.hard_cap,
       p.id, p.name, p.archived_at IS NOT NULL, p.monthly_budget, p.budget_hard_cap,
       {", ".join(f"p.{name}" for name in LIMIT_FIELDS)},
       a.billing_mode = 'prepaid'
FROM customers_apikey k
JOIN customers_account a ON a.id = k.account_id
JOIN customers_tier t ON t.id = a.tier_id
JOIN customers_project p ON p.id = k.project_id
LEFT JOIN customers_limitoverride o ON o.account_id = a.id
LEFT JOIN customers_budget b ON b.account_id = a.id
WHERE k.key_id = %s
"""  # noqa: S608


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: everything the hot path needs about a key, its account, its tier and its
    project."""

    api_key_id: int
    account_id: int
    tier: str
    priority: int
    allowed_models: frozenset[str]
    # The account's effective limits.
    limits: Limits
    # How long a request may wait for a backend slot, and how many may wait in its class.
    queue_timeout: float
    queue_depth: int | None
    # Served under the local cap, metered through the spool, while Redis is unreachable.
    fail_open: bool
    # The account's monthly budget (customers.models.Budget), if it has one.
    budget: Budget | None
    secret_hash: str
    expires_at: datetime | None
    # Revoked, or its project archived (which revokes its keys too).
    revoked: bool
    active: bool
    project_id: int
    project_name: str
    # The project's own limits, checked as well as the account's (None: as the account).
    project_limits: Limits
    # The project's monthly budget, in billing's currency, if it has one.
    project_budget: Budget | None
    # Billed from prepaid credit: admitted only while the balance covers a request's most
    # possible cost (customers.models.Account.billing_mode).
    prepaid: bool

    def may_use(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


@dataclass(slots=True)
class _Entry:
    principal: Principal | None
    fresh_until: float
    # While PostgreSQL cannot be read the entry is served until then, and refused after.
    stale_until: float
    last_used_written: float = 0.0


class Authenticator:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        cache_seconds: float,
        stale_seconds: float,
        currency: str = DEFAULT_CURRENCY,
    ) -> None:
        self.pool = pool
        # Billing's: projects' budgets are in it.
        self.currency = currency
        self.cache_seconds = cache_seconds
        self.stale_seconds = max(stale_seconds, cache_seconds)
        self._cache: dict[str, _Entry] = {}
        # One lookup per key at a time, shared by every request that needs it.
        self._lookups: dict[str, asyncio.Task[_Entry]] = {}
        # Whether the last lookup failed: expired entries are then served without waiting.
        self._database_down = False
        self._direct = asyncio.Lock()
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
        refusal = key_refusal(
            revoked=principal.revoked, expires_at=principal.expires_at, now=datetime.now(UTC)
        )
        if refusal is not None:
            raise invalid_api_key(_REFUSED[refusal])
        if not principal.active:
            raise account_inactive()
        self._note_use(entry, principal.api_key_id)
        return principal

    async def _entry(self, key_id: str) -> _Entry:
        """The key's entry: cached, looked up, or (PostgreSQL away) served stale.

        An expired entry is looked up again; while PostgreSQL answers, the request waits the
        millisecond that takes, so a revocation applies within the cache time. While it does
        not, the request is served the entry it has, at once, and the one lookup of the key
        in flight keeps retrying as requests come. An entry past its staleness bound, or
        none, waits for the lookup, and fails closed (503) if it fails.
        """
        entry = self._cache.get(key_id)
        now = time.monotonic()
        if entry is not None and entry.fresh_until > now:
            return entry
        lookup = self._lookup(key_id)
        if entry is None or entry.stale_until <= now:
            return await asyncio.shield(lookup)
        if not self._database_down:
            with contextlib.suppress(TimeoutError, ApiError):
                return await asyncio.wait_for(asyncio.shield(lookup), _LOOKUP_PATIENCE)
        return entry

    def _lookup(self, key_id: str) -> "asyncio.Task[_Entry]":
        """The key's lookup in flight, started if there is none."""
        lookup = self._lookups.get(key_id)
        if lookup is None:
            lookup = asyncio.create_task(self._looked_up(key_id))
            self._lookups[key_id] = lookup
            lookup.add_done_callback(partial(self._lookup_done, key_id))
        return lookup

    def _lookup_done(self, key_id: str, lookup: "asyncio.Task[_Entry]") -> None:
        del self._lookups[key_id]
        if not lookup.cancelled():
            lookup.exception()  # retrieved: the requests waiting for it re-raise it

    async def _looked_up(self, key_id: str) -> _Entry:
        try:
            principal = await self._load(key_id)
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            if not self._database_down:
                log.warning(
                    "key lookups failing; cached keys are served for up to %ss",
                    self.stale_seconds,
                    exc_info=True,
                )
            self._database_down = True
            raise unavailable(
                "Authentication is temporarily unavailable; retry shortly.",
                code="auth_unavailable",
                retry_after="2",
            ) from exc
        if self._database_down:
            log.info("key lookups work again")
        self._database_down = False
        self._evict_expired()
        now = time.monotonic()
        fresh = _Entry(principal, now + self.cache_seconds, now + self.stale_seconds)
        if (stale := self._cache.get(key_id)) is not None:
            fresh.last_used_written = stale.last_used_written
        self._cache[key_id] = fresh
        return fresh

    def _evict_expired(self) -> None:
        """Bound the cache: well-formed but unknown keys would otherwise pile up."""
        if len(self._cache) < _CACHE_MAX:
            return
        now = time.monotonic()
        self._cache = {k: e for k, e in self._cache.items() if e.stale_until > now}

    async def _load(self, key_id: str) -> Principal | None:
        try:
            async with self.pool.connection(timeout=_DB_TIMEOUT) as conn:
                row = await _key_row(conn, key_id)
        except PoolTimeout:
            row = await self._load_directly(key_id)
        return None if row is None else self._principal(row)

    async def _load_directly(self, key_id: str) -> tuple[Any, ...] | None:
        """The pool has no connection: look the key up on a connection of its own.

        After an outage the pool reconnects on a doubling back-off, minutes late after a long
        one; this notices at once that PostgreSQL is back. One at a time per process, so a
        recovering database sees one extra connection, not one per key.
        """
        conninfo = self.pool.conninfo
        if not isinstance(conninfo, str):  # a conninfo callback: only the pool can connect
            raise PoolTimeout("no connection available")
        async with (
            asyncio.timeout(_DB_TIMEOUT),
            self._direct,
            await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn,
        ):
            return await _key_row(conn, key_id)

    def _principal(self, row: tuple[Any, ...]) -> Principal:
        project_budget = row[25]
        return Principal(
            api_key_id=row[0],
            secret_hash=row[1],
            expires_at=row[2],
            revoked=row[3] is not None or row[24],
            account_id=row[4],
            active=row[5] == "active",
            tier=row[6],
            priority=row[7],
            allowed_models=frozenset(row[8]),
            limits=Limits(*row[9 : 9 + len(LIMIT_FIELDS)]),
            queue_timeout=row[16],
            queue_depth=row[17],
            fail_open=row[18],
            budget=None if row[19] is None else Budget(row[19], row[20], row[21]),
            project_id=row[22],
            project_name=row[23],
            project_limits=Limits(*row[27 : 27 + len(LIMIT_FIELDS)]),
            project_budget=(
                None if project_budget is None else Budget(project_budget, self.currency, row[26])
            ),
            prepaid=row[27 + len(LIMIT_FIELDS)],
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
                    "UPDATE customers_apikey SET last_used_at = now() WHERE id = %s", (api_key_id,)
                )
        except Exception:
            log.warning("could not record last use of key %s", api_key_id, exc_info=True)


async def _key_row(conn: psycopg.AsyncConnection[Any], key_id: str) -> tuple[Any, ...] | None:
    cursor = await conn.execute(_KEY_SQL, (key_id,))
    return await cursor.fetchone()
