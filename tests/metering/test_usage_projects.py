"""Every usage record names its key's project, whichever way it reaches the ledger: a
gateway's final record, the reaper's `lost` record, the spool's replay, and an event from a
gateway older than projects (filled in from its key)."""

import asyncio
import time
import uuid
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from django.conf import settings
from psycopg_pool import AsyncConnectionPool

from customers.services import api_key_issue, project_create, project_default
from gateway.batching import ScriptBatcher
from gateway.inflight import InflightJournal
from gateway.spool import UsageSpool
from metering.events import INFLIGHT_ENTRIES, INFLIGHT_LEASES
from metering.models import UsageRecord
from tests.support.events import inflight_entry, usage
from tests.support.ledger import drain
from tests.support.meter import final, put
from tests.support.tenants import tenant_create

pytestmark = pytest.mark.usefixtures("live_db")


def stored_project(request_id: str) -> int | None:
    drain()
    return UsageRecord.objects.get(request_id=request_id).project_id


def test_a_final_record_is_stored_with_its_project(redis_client: redis.Redis) -> None:
    tenant = tenant_create()
    project = project_create(account=tenant.account, name="research")
    fields = final(account_id=tenant.account.pk, project_id=project.pk)
    put(redis_client, fields)
    assert stored_project(orjson.loads(fields[b"record"])["request_id"]) == project.pk


def test_a_record_from_a_gateway_older_than_projects_takes_its_keys_project(
    redis_client: redis.Redis,
) -> None:
    tenant = tenant_create()
    project = project_create(account=tenant.account, name="legacy")
    key_id = api_key_issue(account=tenant.account, project=project).api_key.pk
    old = final(account_id=tenant.account.pk, api_key_id=key_id)  # no project_id in it
    gone = final(account_id=tenant.account.pk, api_key_id=10**12)  # a key deleted since
    for fields in (old, gone):
        put(redis_client, fields)
    assert stored_project(orjson.loads(old[b"record"])["request_id"]) == project.pk
    assert stored_project(orjson.loads(gone[b"record"])["request_id"]) is None


def test_a_reaped_request_is_stored_with_its_project(redis_client: redis.Redis) -> None:
    tenant = tenant_create()
    project = project_default(tenant.account)
    request_id = str(uuid.uuid4())
    entry = inflight_entry(request_id=request_id, account_id=tenant.account.pk)
    entry["project_id"] = project.pk
    # An in-flight entry whose lease lapsed: its gateway died.
    redis_client.zadd(INFLIGHT_LEASES, {request_id: time.time() - 1})
    redis_client.hset(INFLIGHT_ENTRIES, request_id, orjson.dumps(entry))

    async def reap() -> int:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            batcher = ScriptBatcher(client, linger=0.001)
            return await InflightJournal(client, batcher, lease_seconds=3).reap()
        finally:
            await client.aclose()

    assert asyncio.run(reap()) >= 1
    drain()
    record = UsageRecord.objects.get(request_id=request_id)
    assert (record.outcome, record.project_id) == ("gateway_lost", project.pk)


async def test_spooled_requests_are_stored_with_their_project(tmp_path: Path) -> None:
    db = settings.DATABASES["default"]
    pool = AsyncConnectionPool(
        f"dbname={db['NAME']} user={db['USER']} host={db['HOST']} port={db['PORT']}", open=False
    )
    await pool.open()
    finished, cut_off = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        spool = UsageSpool(tmp_path, pool)
        for request_id in (finished, cut_off):
            await spool.open(request_id, {**inflight_entry(request_id=request_id), "project_id": 7})
        await spool._settle(finished, {**usage(request_id=finished), "project_id": 7})
        assert spool._file is not None
        spool._file.close()  # the process dies: the other request is replayed as lost

        assert await UsageSpool(tmp_path, pool).replay() == 2
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT outcome, project_id FROM metering_usagerecord "
                "WHERE request_id = ANY(%s::uuid[])",
                ([finished, cut_off],),
            )
            stored = sorted(await cursor.fetchall())
    finally:
        await pool.close()
    assert stored == [("gateway_lost", 7), ("ok", 7)]
