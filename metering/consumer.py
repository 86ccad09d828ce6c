"""The meter: moves usage events from the Redis stream into PostgreSQL, exactly once.

Events are read through a consumer group and acknowledged (and deleted) only after the
transaction that stored them commits, so the stream is the durable spool while PostgreSQL is
away: a failed batch stays pending and is written again, and the insert ignores copies it
already has. Any number of meters can run; a dead meter's pending events are claimed by
another after METERING["CLAIM_IDLE_SECONDS"], which then removes the dead meter's consumer;
a meter that stops removes its own, or hands back the batch it could not store.

Bad data is not an outage: an event the database refuses (a negative token count breaks a
CHECK), that cannot even be decoded, or that claims more tokens than any request can have
(METERING_MAX_PROMPT_TOKENS, METERING_MAX_COMPLETION_TOKENS: a buggy or hostile backend) is set
aside in QuarantinedEvent, with the reason, and acknowledged once that row commits, so that it
never holds back the events behind it, and never reaches an invoice unless staff release it.
"""

import logging
import os
import socket
import threading
import time
from typing import Any

import orjson
import psycopg
import redis
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, close_old_connections, connection
from prometheus_client import Counter
from redis.typing import StreamIdT

from metering.events import FIRST_SHARD, USAGE_GROUP, journal_shards, record_from_event
from metering.models import QuarantinedEvent
from metering.redis_clients import redis_connect
from metering.redis_scripts import SCRIPTS, run
from metering.services import usage_records_write

log = logging.getLogger(__name__)

_Entry = tuple[bytes, dict[bytes, bytes]]
_Entries = list[_Entry]

# How long a read waits for new events; a stopping meter waits at most this long for it.
_BLOCK_MS = 250
# How often a meter looks for a dead meter's events and consumers.
_SWEEP_SECONDS = 1.0
# An event that cannot be decoded (not JSON, a field missing, a value of the wrong type);
# orjson's decode error is a ValueError.
_MALFORMED = (KeyError, ValueError, TypeError)
# The values themselves cannot be stored (the database refused a CHECK, NOT NULL, a type or
# its range; a record lacks a column), so writing them again cannot succeed. COPY raises
# psycopg's own classes, INSERT Django's.
_REFUSED = (DataError, IntegrityError, psycopg.DataError, psycopg.IntegrityError, *_MALFORMED)
# Every other database error (a lost connection above all) keeps the batch and retries it.
_UNAVAILABLE = (DatabaseError, psycopg.Error)

QUARANTINED = Counter(
    "tf_meter_quarantined_events",
    "Usage events the meter set aside (console: Quarantined events), by reason: "
    "malformed (could not be decoded), refused (the database rejected a value) or "
    "beyond_limits (more tokens than a request can have).",
    ["reason"],
)

# Removes a consumer from the meter's group unless it holds events or read lately
# (metering/lua/meter_forget.lua).
_FORGET = SCRIPTS["meter_forget"]


class Meter:
    def __init__(
        self,
        client: redis.Redis,
        *,
        batch_size: int,
        claim_idle_seconds: float,
        name: str | None = None,
        stream: str = FIRST_SHARD.stream,
    ) -> None:
        self.client = client
        self.stream = stream
        self.batch_size = batch_size
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._sweep_at = 0.0

    @classmethod
    def from_settings(cls) -> "list[Meter]":
        """One meter per shard of the usage stream (METERING_SHARDS), on one client."""
        client = redis_connect(settings.REDIS_URL)
        return [
            cls(
                client,
                batch_size=settings.METERING.batch_size,
                claim_idle_seconds=settings.METERING.claim_idle_seconds,
                stream=shard.stream,
            )
            for shard in journal_shards(settings.METERING.shards)
        ]

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, USAGE_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, stop: threading.Event) -> None:
        """Store events until `stop` is set, then leave the group; rides out Redis being away
        or coming back empty. Stops within _BLOCK_MS plus the batch in hand."""
        while not stop.is_set():
            try:
                self._consume(stop)
            except redis.RedisError:
                log.warning("Redis unavailable; the meter retries in 1 s", exc_info=True)
                stop.wait(1.0)
        self.leave()

    def _consume(self, stop: threading.Event) -> None:
        self.ensure_group()
        # Our own unacknowledged events first (we may have died mid-batch), then new ones.
        backlog = True
        while not stop.is_set():
            entries = self._sweep() or self._read(backlog)
            backlog = backlog and bool(entries)
            if entries:
                self._store(entries, stop)

    def drain(self) -> int:
        """Store everything currently in the stream; returns how many events were stored."""
        self.ensure_group()
        stored = 0
        while entries := self._read(backlog=True) or self._read(backlog=False, block=None):
            stored += self._store(entries, threading.Event())
        self.leave()
        return stored

    def _read(self, backlog: bool, block: int | None = _BLOCK_MS) -> _Entries:
        reply: Any = self.client.xreadgroup(
            USAGE_GROUP,
            self.name,
            {self.stream: "0" if backlog else ">"},
            count=self.batch_size,
            block=None if backlog else block,
        )
        return list(reply[0][1]) if reply else []

    def _sweep(self) -> _Entries:
        """Every _SWEEP_SECONDS, under load too: a batch of the events dead meters left
        pending, claimed for this one; once none is left, the dead meters' consumers go."""
        if time.monotonic() < self._sweep_at:
            return []
        claimed = self._claim()
        if not claimed:
            self._sweep_at = time.monotonic() + _SWEEP_SECONDS
            self._forget_dead()
        return claimed

    def _claim(self) -> _Entries:
        reply: Any = self.client.xautoclaim(
            self.stream, USAGE_GROUP, self.name, self.claim_idle_ms, count=self.batch_size
        )
        return [entry for entry in reply[1] if entry[1]]

    def _forget_dead(self) -> None:
        """Remove the consumers of meters that are gone: none of their events is pending any
        more (claimed above) and they have been silent longer than a live meter ever is."""
        consumers: Any = self.client.xinfo_consumers(self.stream, USAGE_GROUP)
        for consumer in consumers:
            name = consumer["name"].decode()
            silent = consumer["pending"] == 0 and consumer["idle"] > self.claim_idle_ms
            if name != self.name and silent and self._forget(name, self.claim_idle_ms):
                log.info("removed a dead meter's consumer", extra={"consumer": name})

    def leave(self) -> None:
        """Remove this meter's consumer from the group; or, if events are still pending on it
        (a batch it could not store), hand them back: another meter claims them at once and
        removes the consumer later. Safe while a batch is still being written."""
        try:
            if not self._forget(self.name, 0):
                self._hand_back()
        except redis.RedisError:
            log.warning("could not leave the meter group; another meter will", exc_info=True)

    def _forget(self, consumer: str, idle_ms: int) -> bool:
        """Remove the consumer unless it holds events or was active within `idle_ms`; returns
        whether it is gone."""
        gone = run(self.client, _FORGET, (self.stream,), (USAGE_GROUP, consumer, idle_ms))
        return bool(gone)

    def _store(self, entries: _Entries, stop: threading.Event) -> int:
        """Store a batch, then acknowledge it; returns how many events were stored (the rest
        were quarantined). While PostgreSQL is away the batch is retried; if the meter is
        stopped meanwhile, the batch is left unacknowledged."""
        delay = 0.5
        while True:
            try:
                stored = self._write(entries)
                break
            except _UNAVAILABLE:
                # PostgreSQL is away: keep the batch pending in Redis and try again.
                log.warning("usage write failed; retrying in %.1fs", delay, exc_info=True)
                connection.close()
                if stop.wait(delay):
                    return 0  # unacknowledged: leave() hands the batch back
                delay = min(delay * 2, 10.0)
                close_old_connections()
        self._acknowledge(entries)
        log.info("usage stored", extra={"events": len(entries), "stored": stored})
        return stored

    def _write(self, entries: _Entries) -> int:
        """Store what the database accepts and quarantine the rest; returns how many were stored.

        Raises the database's error when it is unavailable: the whole batch is then written
        again, which is harmless (the ledger ignores copies, a quarantined event is kept once).
        """
        decoded = []
        for entry in entries:
            try:
                record = record_from_event(entry[1])
            except _MALFORMED as exc:
                self._quarantine(entry, exc, reason="malformed")
                continue
            try:
                _limits_check(record)
            except BeyondLimits as exc:
                self._quarantine(entry, exc, reason="beyond_limits")
                continue
            decoded.append((entry, record))
        return self._write_decoded(decoded)

    def _write_decoded(self, batch: list[tuple[_Entry, dict[str, Any]]]) -> int:
        """Write the batch in one transaction; if that fails on the events themselves, write
        each half on its own until the refused events stand alone: a bad event costs about
        2·log2(batch) writes, and every good one is stored."""
        try:
            usage_records_write(records=[record for _, record in batch])
            return len(batch)
        except Exception as exc:
            if not _on_the_data(exc):
                raise
            if len(batch) == 1:
                self._quarantine(batch[0][0], exc, reason="refused")
                return 0
            middle = len(batch) // 2
            return self._write_decoded(batch[:middle]) + self._write_decoded(batch[middle:])

    def _quarantine(self, entry: _Entry, exc: Exception, *, reason: str) -> None:
        """Keep the event whole with why it could not be stored (console: Quarantined events).
        Committed before the batch is acknowledged, so the event is never lost."""
        stream_id, fields = entry
        request_id = _request_id(fields)
        _, created = QuarantinedEvent.objects.get_or_create(
            stream_id=stream_id.decode(),
            defaults={
                "request_id": request_id,
                "fields": {_text(name): _text(value) for name, value in fields.items()},
                "error": _text(f"{type(exc).__name__}: {exc}"),
            },
        )
        if created:
            QUARANTINED.labels(reason).inc()
            log.error(
                "usage event %s of request %s quarantined: %s",
                stream_id.decode(),
                request_id or "(unknown)",
                exc,
                extra={"stream_id": stream_id.decode(), "request_id": request_id},
            )

    def _acknowledge(self, entries: _Entries) -> None:
        ids = [entry_id for entry_id, _ in entries]
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.stream, USAGE_GROUP, *ids)
        pipe.xdel(self.stream, *ids)
        pipe.execute()

    def _hand_back(self) -> None:
        """Mark the events pending on this meter as idle for the claim time, so that another
        meter claims them at once instead of after that time."""
        pending: Any = self.client.xpending_range(
            self.stream, USAGE_GROUP, "-", "+", self.batch_size, consumername=self.name
        )
        ids: list[StreamIdT] = [entry["message_id"] for entry in pending]
        if ids:
            self.client.xclaim(
                self.stream, USAGE_GROUP, self.name, 0, ids, idle=self.claim_idle_ms, justid=True
            )


class BeyondLimits(ValueError):
    """A record claims more tokens than any request can have."""


def _limits_check(record: dict[str, Any]) -> None:
    """Raise BeyondLimits for counts beyond METERING_MAX_PROMPT_TOKENS (prompt, cached) or
    METERING_MAX_COMPLETION_TOKENS (completion, reasoning). Billed as sent, one such record is
    worth more than a month of real usage (and 2e9 tokens overflowed the close's sums).
    Values that are not numbers are left to the database, which refuses them."""
    conf = settings.METERING
    limits = {
        "prompt_tokens": conf.max_prompt_tokens,
        "cached_prompt_tokens": conf.max_prompt_tokens,
        "completion_tokens": conf.max_completion_tokens,
        "reasoning_tokens": conf.max_completion_tokens,
    }
    beyond = [
        f"{name} {value:,} > {limit:,}"
        for name, limit in limits.items()
        if isinstance(value := record.get(name), int | float)
        and not isinstance(value, bool)
        and value > limit
    ]
    if beyond:
        raise BeyondLimits(
            f"token counts beyond what a request can have (METERING_MAX_*_TOKENS): "
            f"{', '.join(beyond)}; account {record.get('account_id')}, backend "
            f"{record.get('backend')}, model {record.get('model')}"
        )


def _on_the_data(exc: Exception) -> bool:
    """Whether a write failed on the events themselves, not for want of a database, so that
    writing the batch whole again cannot help while halves of it can."""
    if isinstance(exc, psycopg.ProgrammingError) and exc.sqlstate is None:
        # Raised before anything reached the server: psycopg cannot send a value (a JSON
        # object where a number belongs).
        return True
    return isinstance(exc, _REFUSED)


def _request_id(fields: dict[bytes, bytes]) -> str:
    """The event's request id, if its record can be read that far."""
    try:
        return _text(str(orjson.loads(fields[b"record"])["request_id"]))[:64]
    except (KeyError, TypeError, orjson.JSONDecodeError):
        return ""


def _text(value: bytes | str) -> str:
    """Text PostgreSQL accepts: invalid UTF-8 and NUL (which no text or JSON value may hold)
    spelled as escapes, so that a quarantine row itself is never refused."""
    if isinstance(value, bytes):
        value = value.decode(errors="backslashreplace")
    return value.replace("\x00", "\\x00")
