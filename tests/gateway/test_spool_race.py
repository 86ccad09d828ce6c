"""Gateways spooling and replaying one spool directory at once lose no usage record."""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import multiprocessing
import os
import random
import time
import uuid
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import IO

import pytest
from django.conf import settings
from psycopg_pool import AsyncConnectionPool

from gateway.spool import UsageSpool, _created, _finished_records
from metering.models import UsageRecord
from tests.support.events import inflight_entry, usage
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.redis_cluster

GATEWAYS = 3
REQUESTS_EACH = 100
SECONDS_EACH = 20.0  # a slow machine makes fewer requests, not a hung test


def conninfo() -> str:
    db = settings.DATABASES["default"]
    return f"dbname={db['NAME']} user={db['USER']} host={db['HOST']} port={db['PORT']}"


async def serve_and_replay(directory: Path, account_id: int, served: Synchronized[int]) -> int:
    """One gateway: each request spooled, then a replay, which rotates this process's file
    (a new file for the next request) and replays every other gateway's finished files.

    Counts its requests in `served` and returns how many replays failed; as in the gateway, a
    failed replay is retried later.
    """
    pool = AsyncConnectionPool(conninfo(), min_size=1, max_size=2, open=False)
    await pool.open()
    spool = UsageSpool(directory, pool)
    failed = 0
    busy = asyncio.create_task(serve_others())
    try:
        deadline = time.monotonic() + SECONDS_EACH
        while served.value < REQUESTS_EACH and time.monotonic() < deadline:
            request_id = str(uuid.uuid4())
            await spool.open(
                request_id, inflight_entry(request_id=request_id, account_id=account_id)
            )
            spool.settle(request_id, usage(request_id=request_id, account_id=account_id))
            served.value += 1
            try:
                await spool.replay()
            except Exception:
                failed += 1
        # Settles are fire-and-forget: wait until they are written.
        await wait_until_async(
            lambda: not spool.live, timeout=30, interval=0.01, what="the settles to be written"
        )
        await spool.replay()  # hands the last records over
    finally:
        busy.cancel()
        await pool.close()
    return failed


async def serve_others() -> None:
    """The rest of a busy gateway's work: its event loop holds the GIL most of the time, so
    the spool's writer thread waits for it between any two steps. (Never idle at all, it
    starves the writer thread for seconds a step on some kernels, which no gateway does.)"""
    for step in itertools.count():
        sum(range(20_000))
        await asyncio.sleep(0.001 if step % 10 == 0 else 0)  # kept a sleep: paces the work


def gateway_process(directory: Path, account_id: int, served: Synchronized[int]) -> None:
    failed = asyncio.run(serve_and_replay(directory, account_id, served))
    assert failed == 0, f"{failed} replays failed"  # the exit code tells the test


async def replay_all(directory: Path) -> None:
    pool = AsyncConnectionPool(conninfo(), min_size=1, max_size=1, open=False)
    await pool.open()
    try:
        await UsageSpool(directory, pool).replay()
    finally:
        await pool.close()


# Three processes that keep both cores busy on purpose (serve_others), each for at most
# SECONDS_EACH.
@pytest.mark.timeout(120)
def test_gateways_spooling_and_replaying_at_once_lose_no_record(
    live_db: None, tmp_path: Path
) -> None:
    account_id = random.randrange(10**9, 10**10)  # marks this run's records
    fork = multiprocessing.get_context("fork")
    served = [fork.Value("i", 0) for _ in range(GATEWAYS)]
    gateways = [
        fork.Process(target=gateway_process, args=(tmp_path, account_id, count)) for count in served
    ]
    for gateway in gateways:
        gateway.start()
    for gateway in gateways:
        gateway.join(SECONDS_EACH + 60)
    asyncio.run(replay_all(tmp_path))  # what the last replays left, e.g. files being written
    stored = UsageRecord.objects.filter(account_id=account_id)
    requests = sum(count.value for count in served)
    assert min(count.value for count in served) >= 10, "too slow to race: raise SECONDS_EACH"
    assert stored.count() == requests
    assert set(stored.values_list("outcome", flat=True)) == {"ok"}
    assert not list(tmp_path.iterdir())
    assert [gateway.exitcode for gateway in gateways] == [0] * GATEWAYS


def test_an_empty_unlocked_file_is_deleted_only_once_no_writer_can_own_it(
    live_db: None, tmp_path: Path
) -> None:
    young, old = tmp_path / "1-young.jsonl", tmp_path / "1-old.jsonl"
    orphan = tmp_path / "1-orphan.tmp"  # its writer died before renaming it into place
    for path in (young, old, orphan):
        path.touch()
    long_ago = time.time() - 3600
    for path in (old, orphan):
        os.utime(path, (long_ago, long_ago))
    asyncio.run(replay_all(tmp_path))
    assert list(tmp_path.iterdir()) == [young]


def test_a_replay_between_a_files_creation_and_its_lock_finds_nothing_to_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window the busy gateways above may or may not hit, opened on purpose: another
    gateway replays the directory just before the writer locks its new file."""
    flock = fcntl.flock
    seen: dict[str, object] = {}

    def replay_then_flock(file: IO[bytes], operation: int) -> None:
        if operation & fcntl.LOCK_EX:
            for path in tmp_path.iterdir():
                seen[path.name] = _finished_records(path)
        flock(file, operation)

    monkeypatch.setattr(fcntl, "flock", replay_then_flock)
    _created(tmp_path).close()
    assert seen, "the writer never locked a file"
    deleted = [name for name, records in seen.items() if records is not None]
    assert not deleted, "a replay would have deleted a file being written"
