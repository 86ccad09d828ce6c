"""Serving fail-open tiers while Redis is unreachable: a local cap and a durable usage spool.

Redis holds the limits, the queue and the in-flight journal, so without it a request can be
neither checked nor metered the usual way. Tiers marked `when_redis_down = open` are still
served, under a per-process cap (`FailOpenCap`), and metered through `UsageSpool`, which keeps
the in-flight journal's promise with a local file instead of Redis:

    open   → a line with the in-flight entry, fsynced before anything is sent to a backend
    settle → a line with the usage record, fsynced in the background
    replay → files no process is writing are copied into PostgreSQL (idempotent on the
             record's primary key) and deleted; an entry without a record becomes a
             `gateway_lost` record, as the reaper would make it

A file is being written while its process holds an exclusive `flock` on it, so any gateway on
the host may replay the files of a process that died. A file is created under a temporary
name, locked, and only then renamed into place, so no replay ever sees it unlocked while its
writer lives (a replay that did would read it empty and delete it under the writer). The
writer rotates its own file when it has records to hand over, carrying the entries still in
flight into the new file first.
"""

import asyncio
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson
from psycopg_pool import AsyncConnectionPool

from gateway import errors
from gateway.inflight import Progress
from metering.events import record_from_event
from metering.services import usage_store_spooled

log = logging.getLogger(__name__)

# An empty, unlocked spool file this old has no writer (it died before its first line) and
# holds nothing: it is deleted. Younger ones are left alone.
_ORPHAN_SECONDS = 60.0


class FailOpenCap:
    """At most `concurrency` requests at once and `per_minute` a minute, in this process."""

    def __init__(self, *, concurrency: int, per_minute: int) -> None:
        self.concurrency = concurrency
        self.per_minute = per_minute
        self.running = 0
        self._window_start = 0.0
        self._in_window = 0

    def take(self) -> None:
        """Count one request in, or refuse it with 503 + retry-after."""
        now = time.monotonic()
        if now - self._window_start >= 60.0:
            self._window_start, self._in_window = now, 0
        if self.running >= self.concurrency or self._in_window >= self.per_minute:
            raise errors.unavailable(
                "Limits cannot be checked right now and the degraded-mode capacity is in use; "
                "retry shortly.",
                code="limits_unavailable",
            )
        self.running += 1
        self._in_window += 1

    def give_back(self) -> None:
        self.running -= 1


class UsageSpool:
    """The in-flight journal's stand-in while Redis is away (same open/settle interface)."""

    def __init__(self, directory: Path, pool: AsyncConnectionPool) -> None:
        self.directory = directory
        self.pool = pool
        # request_id -> its in-flight entry, for requests opened here and not yet settled.
        self.live: dict[str, dict[str, Any]] = {}
        self._file: IO[bytes] | None = None
        self._records = 0
        self._lock = asyncio.Lock()

    async def open(self, request_id: str, entry: dict[str, Any]) -> Progress:
        async with self._lock:
            await asyncio.to_thread(self._append, [{"kind": "open", "entry": entry}])
        self.live[request_id] = entry
        return Progress()

    def settle(self, request_id: str, record: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._settle(request_id, record))
        task.add_done_callback(_check_spooled)

    async def _settle(self, request_id: str, record: dict[str, Any]) -> None:
        async with self._lock:
            # Live until its record is written, so a rotation meanwhile carries it; if the
            # write fails, the next replay stores the request as lost.
            try:
                await asyncio.to_thread(self._append, [{"kind": "final", "record": record}])
            finally:
                self.live.pop(request_id, None)
                self._records += 1

    def _append(self, lines: Iterable[dict[str, Any]]) -> None:
        if self._file is None:
            self._file = _created(self.directory)
        self._file.write(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    async def replay(self) -> int:
        """Copy every finished spool file into the ledger; returns the records stored."""
        async with self._lock:
            if self._records:
                await asyncio.to_thread(self._rotate)
        stored = 0
        for path in sorted(self.directory.glob("*.jsonl")):
            stored += await self._replay_file(path)
        await asyncio.to_thread(_orphans_delete, self.directory)
        return stored

    def _rotate(self) -> None:
        """Hand this process's records over: start a new file with the live entries in it."""
        assert self._file is not None
        old = self._file
        self._file, self._records = None, 0
        if self.live:
            self._append({"kind": "open", "entry": entry} for entry in self.live.values())
        carried = list(self.live)
        old.write(orjson.dumps({"kind": "rotated", "carried": carried}) + b"\n")
        old.flush()
        os.fsync(old.fileno())
        old.close()  # releases the lock: the file is replayable

    async def _replay_file(self, path: Path) -> int:
        records = await asyncio.to_thread(_finished_records, path)
        if records is None:
            return 0  # a live process is writing it
        if records:
            async with self.pool.connection(timeout=5.0) as conn:
                await usage_store_spooled(conn, records)
        # Another gateway's replay may have stored and deleted it meanwhile (stored once).
        await asyncio.to_thread(path.unlink, missing_ok=True)
        log.info("replayed spooled usage", extra={"file": path.name, "records": len(records)})
        return len(records)


def _created(directory: Path) -> IO[bytes]:
    """A new spool file of this process, locked before any replay can see it."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary = directory / f"{name}.tmp"
    file = temporary.open("ab")
    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    temporary.rename(directory / f"{name}.jsonl")
    # The new name must survive a crash too, or the fsynced lines go with the old one.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return file


def _finished_records(path: Path) -> list[dict[str, Any]] | None:
    """The usage records of a spool file no process holds, or None while one may."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return None  # another gateway's replay has just stored it
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        lines = file.read().splitlines()
    if not lines and not _orphaned(path):
        return None  # never deleted under a writer that might still own it
    opened: dict[str, dict[str, Any]] = {}
    records: list[dict[str, Any]] = []
    carried: set[str] = set()
    for raw in lines:
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # a line torn by a crash mid-write: its request was never sent
        if line["kind"] == "open":
            opened[line["entry"]["request_id"]] = line["entry"]
        elif line["kind"] == "final":
            opened.pop(line["record"]["request_id"], None)
            records.append(line["record"])
        elif line["kind"] == "rotated":
            carried.update(line["carried"])
    fields = [{b"kind": b"final", b"record": orjson.dumps(record)} for record in records] + [
        {b"kind": b"lost", b"record": orjson.dumps(entry)}
        for request_id, entry in opened.items()
        if request_id not in carried
    ]
    return [record_from_event(event) for event in fields]


def _orphaned(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > _ORPHAN_SECONDS
    except FileNotFoundError:
        return False


def _orphans_delete(directory: Path) -> None:
    """Delete the temporary files of writers that died before renaming them into place."""
    for path in directory.glob("*.tmp"):
        if _orphaned(path):
            path.unlink(missing_ok=True)


def _check_spooled(task: "asyncio.Future[None]") -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        # The entry's open line stays without a record: replay stores it as lost.
        log.error("could not spool a usage record", exc_info=exc)
