"""The meter: moves usage events from the Redis stream into PostgreSQL, exactly once.

Events are read through a consumer group and acknowledged (and deleted) only after the
transaction that stored them commits, so the stream is the durable spool while PostgreSQL is
away: a failed batch stays pending and is written again, and the insert ignores copies it
already has. Any number of meters can run; a dead meter's pending events are claimed by
another after METERING["CLAIM_IDLE_SECONDS"].
"""

import logging
import os
import socket
import threading
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from metering.events import USAGE_GROUP, USAGE_STREAM, record_from_event
from metering.services import usage_records_write

log = logging.getLogger(__name__)

_Entries = list[tuple[bytes, dict[bytes, bytes]]]


class Meter:
    def __init__(self, client: redis.Redis, *, batch_size: int, claim_idle_seconds: float) -> None:
        self.client = client
        self.batch_size = batch_size
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.name = f"{socket.gethostname()}-{os.getpid()}"

    @classmethod
    def from_settings(cls) -> "Meter":
        return cls(
            redis.Redis.from_url(settings.REDIS_URL),
            batch_size=settings.METERING["BATCH_SIZE"],
            claim_idle_seconds=settings.METERING["CLAIM_IDLE_SECONDS"],
        )

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(USAGE_STREAM, USAGE_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, stop: threading.Event) -> None:
        """Store events until `stop` is set; rides out Redis being away or coming back empty."""
        while not stop.is_set():
            try:
                self._consume(stop)
            except redis.RedisError:
                log.warning("Redis unavailable; the meter retries in 1 s", exc_info=True)
                stop.wait(1.0)

    def _consume(self, stop: threading.Event) -> None:
        self.ensure_group()
        # Our own unacknowledged events first (we may have died mid-batch), then new ones.
        backlog = True
        while not stop.is_set():
            entries = self._read(backlog) or self._claim()
            backlog = backlog and bool(entries)
            if entries:
                self._store(entries, stop)

    def drain(self) -> int:
        """Store everything currently in the stream; returns how many events were stored."""
        self.ensure_group()
        stored = 0
        while entries := self._read(backlog=True) or self._read(backlog=False, block=None):
            self._store(entries, threading.Event())
            stored += len(entries)
        return stored

    def _read(self, backlog: bool, block: int | None = 1000) -> _Entries:
        reply: Any = self.client.xreadgroup(
            USAGE_GROUP,
            self.name,
            {USAGE_STREAM: "0" if backlog else ">"},
            count=self.batch_size,
            block=None if backlog else block,
        )
        return list(reply[0][1]) if reply else []

    def _claim(self) -> _Entries:
        reply: Any = self.client.xautoclaim(
            USAGE_STREAM, USAGE_GROUP, self.name, self.claim_idle_ms, count=self.batch_size
        )
        return [entry for entry in reply[1] if entry[1]]

    def _store(self, entries: _Entries, stop: threading.Event) -> None:
        records = [record_from_event(fields) for _, fields in entries]
        delay = 0.5
        while True:
            try:
                inserted = usage_records_write(records=records)
                break
            except DatabaseError:
                # PostgreSQL is away: keep the batch pending in Redis and try again.
                log.warning("usage write failed; retrying in %.1fs", delay, exc_info=True)
                connection.close()
                if stop.wait(delay):
                    return
                delay = min(delay * 2, 10.0)
                close_old_connections()
        ids = [entry_id for entry_id, _ in entries]
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(USAGE_STREAM, USAGE_GROUP, *ids)
        pipe.xdel(USAGE_STREAM, *ids)
        pipe.execute()
        log.info("usage stored", extra={"events": len(ids), "inserted": inserted})
