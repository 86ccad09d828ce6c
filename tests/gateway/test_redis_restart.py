"""Redis stopped under load and restarted empty: paid tiers fail closed, the free tier fails
open under a local cap with its usage spooled, quotas come back from PostgreSQL, and no usage
is lost. Runs against a redis-server of its own."""

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import redis
from django.conf import settings
from psycopg_pool import AsyncConnectionPool

from customers.models import LimitOverride
from gateway.spool import UsageSpool
from metering.models import UsageRecord
from tests.support.events import inflight_entry, usage
from tests.support.gateway import slots_held
from tests.support.redis_server import RedisServer
from tests.support.servers import ROOT, Server, free_port, gateway_env, start_gateway
from tests.support.tenants import MODEL, Tenant, tenant_create
from tests.support.waiting import wait_until


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.kill()


def test_quotas_survive_redis_coming_back_empty_and_no_usage_is_lost(
    own_redis: RedisServer, fleet: None
) -> None:
    tenant = tenant_create("premium")
    LimitOverride.objects.create(account=tenant.account, tokens_per_day=120)
    env = {**gateway_env(), "REDIS_URL": own_redis.url}
    gateway: Server = start_gateway(env)
    meter = subprocess.Popen([sys.executable, "manage.py", "meter"], cwd=ROOT, env=env)
    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)
    client = redis.Redis.from_url(own_redis.url)

    def ask() -> None:
        api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=50
        )

    try:
        served = 0
        with pytest.raises(openai.RateLimitError) as spent:
            for _ in range(10):
                ask()
                served += 1
                # Settling runs after the answer: let it land, so that the refusal comes from
                # tokens used, not from a reservation still held.
                wait_until(
                    lambda: slots_held(client, tenant.account.pk) == 0,
                    what="the request's settle to land",
                )
        assert spent.value.code == "insufficient_quota" and served >= 1
        records = UsageRecord.objects.filter(account_id=tenant.account.pk)
        wait_until(lambda: records.count() >= served, interval=0.1, what=f"{served} records stored")

        own_redis.kill()
        with pytest.raises(openai.InternalServerError) as closed:
            ask()  # a paid tier fails closed while its limits cannot be checked
        assert closed.value.status_code == 503
        assert "retry-after" in closed.value.response.headers

        own_redis.start()  # empty: no persistence
        wait_until(
            lambda: redis.Redis.from_url(own_redis.url).exists("{limits}:epoch"),
            interval=0.1,
            what="the counters to be rebuilt",
        )
        with pytest.raises(openai.RateLimitError) as still_spent:
            ask()
        assert still_spent.value.code == "insufficient_quota"
        assert records.count() == served
    finally:
        meter.terminate()
        meter.wait(10)
        gateway.stop()
        client.close()


def test_free_tier_fails_open_under_the_local_cap_and_its_usage_reaches_the_ledger(
    own_redis: RedisServer, fleet: None, tmp_path: Path
) -> None:
    free, premium = tenant_create("free"), tenant_create("premium")
    env = {
        **gateway_env(),
        "REDIS_URL": own_redis.url,
        "GATEWAY_SPOOL_DIR": str(tmp_path),
        "GATEWAY_FAIL_OPEN_CONCURRENCY": "2",
        "GATEWAY_FAIL_OPEN_REQUESTS_PER_MINUTE": "12",
    }
    gateway: Server = start_gateway(env)

    def ask(tenant: Tenant) -> int:
        api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)
        try:
            api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=20
            )
        except openai.APIStatusError as error:
            assert error.status_code == 503 and "retry-after" in error.response.headers
            return 503
        return 200

    try:
        ask(free)  # warms the key cache: PostgreSQL is up, only Redis goes
        own_redis.kill()
        assert ask(premium) == 503  # a paid tier fails closed
        # Under load: 4 callers against a cap of 2 at once and 12 a minute.
        with ThreadPoolExecutor(4) as callers:
            answers = list(callers.map(lambda _: ask(free), range(16)))
        served = answers.count(200)
        assert 1 <= served <= 12 and answers.count(503) == 16 - served
        # Every answered request reaches the ledger through the spool, exactly once.
        records = UsageRecord.objects.filter(account_id=free.account.pk)
        wait_until(
            lambda: records.count() >= served,
            interval=0.1,
            what=f"{served} spooled records stored",
        )
        # Kept a sleep, the scenario: another replay round goes by, and stores nothing twice
        # (an absence: nothing to poll for).
        time.sleep(1.5)
        assert records.count() == served
        assert set(records.values_list("outcome", flat=True)) == {"ok"}
        assert not UsageRecord.objects.filter(account_id=premium.account.pk).exists()
        assert not list(tmp_path.glob("*.jsonl"))
    finally:
        gateway.stop()


async def test_a_dead_gateways_spooled_requests_are_stored_as_lost(
    live_db: None, tmp_path: Path
) -> None:
    """The file of a process that died mid-request is replayed by any other on the host."""
    db = settings.DATABASES["default"]
    pool = AsyncConnectionPool(
        f"dbname={db['NAME']} user={db['USER']} host={db['HOST']} port={db['PORT']}", open=False
    )
    await pool.open()
    finished, cut_off = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        dead = UsageSpool(tmp_path, pool)
        for request_id in (finished, cut_off):
            await dead.open(request_id, inflight_entry(request_id=request_id))
        await dead._settle(finished, usage(request_id=finished))
        assert dead.live.keys() == {cut_off}
        assert await UsageSpool(tmp_path, pool).replay() == 0  # its writer still holds it
        assert dead._file is not None
        dead._file.close()  # the process dies: the kernel drops its lock, nothing rotated

        assert await UsageSpool(tmp_path, pool).replay() == 2
        assert await UsageSpool(tmp_path, pool).replay() == 0
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT request_id::text, outcome FROM metering_usagerecord "
                "WHERE request_id = ANY(%s::uuid[])",
                ([finished, cut_off],),
            )
            stored = dict(await cursor.fetchall())
    finally:
        await pool.close()
    assert stored == {finished: "ok", cut_off: "gateway_lost"}


def test_a_gateway_started_while_redis_is_away_serves_the_free_tier(
    own_redis: RedisServer, fleet: None, tmp_path: Path
) -> None:
    """It cannot ask Redis whether it is a cluster: it starts as on one server, and the free
    tier is served through the spool until Redis answers."""
    free = tenant_create("free")
    own_redis.kill()
    env = {**gateway_env(), "REDIS_URL": own_redis.url, "GATEWAY_SPOOL_DIR": str(tmp_path)}
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port)]
    gateway = Server(args, port=port, ready_path="/healthz", env=env)
    try:
        api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=free.key, max_retries=0)
        api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        records = UsageRecord.objects.filter(account_id=free.account.pk)
        wait_until(lambda: records.count() == 1, what="the spooled record stored")
    finally:
        gateway.stop()
