"""Reads on a PostgreSQL read replica, where a few seconds' lag is harmless (docs/deployment.md,
"PostgreSQL: primary and read replica").

With DATABASE_REPLICA_URL set, Django has a second database, `replica`, with this router and
middleware (config/settings.py); unset, there is one database and none of this runs. Nothing
reads the replica by accident: reads go there only inside `replica_reads()`, which the
middleware opens for safe requests (GET, HEAD, OPTIONS) to the staff console and management
API, and which the finance report and the exports open themselves. Inside it the primary still
serves:

- every write, every read after a write in the same scope, and every read in a transaction;
- who is asking (users, permissions, sessions, two-factor devices, lockouts, staff tokens:
  PRIMARY_ONLY), so a revoked token or an ended session ends at once, not a lag later;
- a client whose own write the replica has not replayed yet: a request that writes leaves a
  cookie with the primary's WAL position (read your writes), and the client reads the primary
  until the replica has replayed past it.

The replica is probed every PROBE_SECONDS on a connection of its own (is it up, how far
behind): one that does not answer is left alone for DOWN_SECONDS, reads going to the primary,
and a safe request that failed while reading it is served again from the primary. Each change
(down, back, behind, caught up) is one log line. Raw SQL reads through `reading()`, which
follows the same rule.
"""

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model
from django.http import HttpRequest, HttpResponseBase

log = logging.getLogger(__name__)

REPLICA = "replica"
# The staff console, its management API and the finance report read the replica; the key
# holders' and members' own APIs (their sign-in, their keys) stay on the primary, as the portal.
REPLICA_PATHS = ("/admin/", "/api/v1/", "/billing/report/")
PRIMARY_PATHS = ("/api/v1/me/", "/api/v1/org/")
# Who is asking and what they may do: always read where it was last written.
PRIMARY_ONLY = frozenset(
    {"auth", "sessions", "contenttypes", "django_otp", "otp_totp", "axes", "console.stafftoken"}
)
PROBE_SECONDS = 2.0
# libpq's connect_timeout, in whole seconds (it takes 2 for anything less).
PROBE_TIMEOUT_SECONDS = 2
DOWN_SECONDS = 5.0
# From this far behind, console pages read from the replica say so, and the log says it once.
LAG_NOTE_SECONDS = 5.0
# The primary's WAL position after this client's last write; kept at most this long.
PIN_COOKIE = "tf_read_after"
PIN_MAX_SECONDS = 300
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# On a standby: is it one, what it has replayed, and how long ago the last transaction it
# replayed was committed, unless it has replayed everything it received (then it is current).
_PROBE = """
SELECT pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
       END::float8
"""


def replica_configured() -> bool:
    return REPLICA in settings.DATABASES


@dataclass
class ReadScope:
    """Where one `replica_reads()` block reads, and whether it has written (then: the primary)."""

    alias: str
    wrote: bool = False


_scope: ContextVar[ReadScope | None] = ContextVar("replica_reads", default=None)


@contextmanager
def replica_reads(*, after_lsn: int | None = None) -> Iterator[ReadScope]:
    """Reads in the block may go to the replica (module doc): where it is configured, up, and
    has replayed `after_lsn` (the client's last write) if given. A block inside another one
    reads where the outer one does."""
    outer = _scope.get()
    if outer is not None:
        yield outer
        return
    scope = ReadScope(REPLICA if _health.usable(after_lsn) else DEFAULT_DB_ALIAS)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def read_alias() -> str:
    """Where a read made now goes: the replica only inside a scope that reads it, before any
    write of that scope and outside transactions."""
    scope = _scope.get()
    if scope is None or scope.alias != REPLICA or scope.wrote:
        return DEFAULT_DB_ALIAS
    if connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return DEFAULT_DB_ALIAS
    return REPLICA


def reading() -> BaseDatabaseWrapper:
    """The connection for a raw SQL read made now (read_alias)."""
    return connections[read_alias()]


def replica_lag() -> timedelta:
    """How far behind the data that reads made now see is: zero on the primary."""
    if read_alias() != REPLICA:
        return timedelta(0)
    return timedelta(seconds=_health.lag)


def replica_lag_note() -> str | None:
    """What a page read now should say about its data: something only when it reads a replica
    LAG_NOTE_SECONDS or more behind."""
    lag = replica_lag().total_seconds()
    if lag < LAG_NOTE_SECONDS:
        return None
    return (
        f"This page was read from a replica {lag:.0f} s behind the primary: changes made in "
        "the last seconds may not show yet."
    )


class ReplicaRouter:
    """Django's database router: reads where read_alias says, writes on the primary."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        meta = model._meta
        if meta.app_label in PRIMARY_ONLY or meta.label_lower in PRIMARY_ONLY:
            return DEFAULT_DB_ALIAS
        return read_alias()

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        scope = _scope.get()
        if scope is not None:
            scope.wrote = True
        return DEFAULT_DB_ALIAS

    def allow_relation(self, first: Model, second: Model, **hints: Any) -> bool | None:
        # Rows read from either are the same rows.
        return {first._state.db, second._state.db} <= {DEFAULT_DB_ALIAS, REPLICA} or None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == DEFAULT_DB_ALIAS


class ReplicaReadsMiddleware:
    """Safe requests to REPLICA_PATHS read the replica; a request there that writes pins its
    client to the primary (PIN_COOKIE) until the replica has replayed the write."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        path = request.path_info
        if not path.startswith(REPLICA_PATHS) or path.startswith(PRIMARY_PATHS):
            return self.get_response(request)
        if request.method not in _SAFE_METHODS:
            response = self.get_response(request)
            _pin(response)
            return response
        pinned = lsn_parse(request.COOKIES.get(PIN_COOKIE, ""))
        with replica_reads(after_lsn=pinned) as scope:
            response = self.get_response(request)
        if scope.alias == REPLICA and response.status_code >= 500 and _health.failed():
            log.warning(
                "request failed on the read replica, served again from the primary",
                extra={"path": path, "status": response.status_code},
            )
            response.close()
            return self.get_response(request)
        if scope.wrote:
            _pin(response)
        elif pinned is not None and scope.alias == REPLICA:
            response.delete_cookie(PIN_COOKIE)
        return response


def _pin(response: HttpResponseBase) -> None:
    # Where the primary inserts WAL now, past every commit of the request: its write position
    # may still be short of them (synchronous_commit off).
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
            (position,) = cursor.fetchone()
    except DatabaseError:
        return  # the primary did not answer: nothing was written
    response.set_cookie(
        PIN_COOKIE,
        position,
        max_age=PIN_MAX_SECONDS,
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )


def lsn_parse(text: str | None) -> int | None:
    """A WAL position as PostgreSQL writes it (`16/B374D848`) as a number; None if not one."""
    high, slash, low = (text or "").partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16) if slash else None
    except ValueError:
        return None


class _Health:
    """What this process last learnt of the replica, probed at most every PROBE_SECONDS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked = -math.inf
        self._down_until = -math.inf
        self.up: bool | None = None  # None: not probed yet
        self.lag = 0.0
        # What it has replayed; None: everything (it is not a standby).
        self.replayed: int | None = None

    def usable(self, after_lsn: int | None) -> bool:
        if not replica_configured():
            return False
        now = time.monotonic()
        if now < self._down_until:
            return False
        if now - self._checked >= PROBE_SECONDS and self._lock.acquire(blocking=False):
            try:
                self._probe()
            finally:
                self._lock.release()
        if not self.up:
            return False
        return after_lsn is None or self.replayed is None or self.replayed >= after_lsn

    def failed(self) -> bool:
        """Whether the replica is down, probed now: a request that failed on it asks."""
        with self._lock:
            self._probe()
        return not self.up

    def _probe(self) -> None:
        self._checked = time.monotonic()
        params = connections[REPLICA].get_connection_params()
        try:
            with psycopg.connect(
                **params, connect_timeout=PROBE_TIMEOUT_SECONDS, autocommit=True
            ) as probe:
                standby, replayed, lag = probe.execute(_PROBE).fetchone() or (False, None, 0.0)
        except psycopg.Error as error:
            self._down_until = self._checked + DOWN_SECONDS
            if self.up is not False:
                log.warning(
                    "read replica unreachable: reads go to the primary",
                    extra={"error": str(error).strip(), "retry_in_seconds": DOWN_SECONDS},
                )
            self.up = False
            return
        if self.up is False:
            log.info("read replica back: reads go to it again")
        self.up = True
        self._lag_set(float(lag) if standby else 0.0)
        self.replayed = lsn_parse(replayed) if standby else None

    def _lag_set(self, lag: float) -> None:
        behind, was_behind = lag >= LAG_NOTE_SECONDS, self.lag >= LAG_NOTE_SECONDS
        if behind and not was_behind:
            log.warning("read replica behind the primary", extra={"lag_seconds": round(lag, 1)})
        elif was_behind and not behind:
            log.info("read replica caught up", extra={"lag_seconds": round(lag, 1)})
        self.lag = lag


_health = _Health()
