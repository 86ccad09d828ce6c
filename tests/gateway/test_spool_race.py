"""Gateways spooling and replaying one spool directory at once lose no usage record."""

import asyncio
import multiprocessing
import os
import random
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from psycopg_pool import AsyncConnectionPool

from gateway.spool import UsageSpool
from metering.models import UsageRecord
from tests.metering.factories import inflight_entry, usage

GATEWAYS = 3
REQUESTS_EACH = 100


def conninfo() -> str:
    db = settings.DATABASES["default"]
    return f"dbname={db['NAME']} user={db['USER']} host={db['HOST']} port={db['PORT']}"


async def serve_and_replay(directory: Path, account_id: int) -> int:
    """One gateway: each request spooled, then a replay, which rotates this process's file
    (a new file for the next request) and replays every other gateway's finished files.

    Returns how many replays failed; as in the gateway, a failed replay is retried later.
    """
    pool = AsyncConnectionPool(conninfo(), min_size=1, max_size=2, open=False)
    await pool.open()
    spool = UsageSpool(directory, pool)
    failed = 0
    busy = asyncio.create_task(serve_others())
    try:
        for _ in range(REQUESTS_EACH):
            request_id = str(uuid.uuid4())
            await spool.open(
                request_id, inflight_entry(request_id=request_id, account_id=account_id)
            )
            spool.settle(request_id, usage(request_id=request_id, account_id=account_id))
            try:
                await spool.replay()
            except Exception:
                failed += 1
        # Settles are fire-and-forget: wait until they are written.
        while spool.live:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await spool.replay()  # hands the last records over
    finally:
        busy.cancel()
        await pool.close()
    return failed


async def serve_others() -> None:
    """The rest of a busy gateway's work: its event loop holds the GIL most of the time, so
    the spool's writer thread waits for it between any two steps."""
    while True:
        sum(range(20_000))
        await asyncio.sleep(0)


def gateway_process(directory: Path, account_id: int) -> None:
    failed = asyncio.run(serve_and_replay(directory, account_id))
    assert failed == 0, f"{failed} replays failed"  # the exit code tells the test


async def replay_all(directory: Path) -> None:
    pool = AsyncConnectionPool(conninfo(), min_size=1, max_size=1, open=False)
    await pool.open()
    try:
        await UsageSpool(directory, pool).replay()
    finally:
        await pool.close()


# Three processes that keep both cores busy on purpose (serve_others): ~11 s on a quiet machine,
# several times that beside other work.
@pytest.mark.timeout(300)
def test_gateways_spooling_and_replaying_at_once_lose_no_record(
    live_db: None, tmp_path: Path
) -> None:
    account_id = random.randrange(10**9, 10**10)  # marks this run's records
    fork = multiprocessing.get_context("fork")
    gateways = [
        fork.Process(target=gateway_process, args=(tmp_path, account_id)) for _ in range(GATEWAYS)
    ]
    for gateway in gateways:
        gateway.start()
    for gateway in gateways:
        gateway.join(300)
    asyncio.run(replay_all(tmp_path))  # what the last replays left, e.g. files being written
    stored = UsageRecord.objects.filter(account_id=account_id)
    assert stored.count() == GATEWAYS * REQUESTS_EACH
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
