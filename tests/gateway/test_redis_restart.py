"""Redis stopped under load and restarted empty: paid tiers fail closed, quotas come back
from PostgreSQL, and no usage is lost. Runs against a redis-server of its own."""

import subprocess
import sys
import time
from collections.abc import Iterator

import openai
import pytest
import redis

from gateway.models import LimitOverride
from metering.models import UsageRecord
from tests.conftest import MODEL, gateway_env, tenant_create
from tests.servers import ROOT, Server, free_port, start_gateway


class RedisServer:
    """A throwaway redis-server without persistence, which the test can stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def test_quotas_survive_redis_coming_back_empty_and_no_usage_is_lost(
    own_redis: RedisServer, fleet: None
) -> None:
    tenant = tenant_create("premium")
    LimitOverride.objects.create(account=tenant.account, tokens_per_day=120)
    env = {**gateway_env(), "REDIS_URL": own_redis.url}
    gateway: Server = start_gateway(env)
    meter = subprocess.Popen([sys.executable, "manage.py", "meter"], cwd=ROOT, env=env)
    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)

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
        assert spent.value.code == "insufficient_quota" and served >= 1
        records = UsageRecord.objects.filter(account_id=tenant.account.pk)
        deadline = time.monotonic() + 10
        while records.count() < served:
            assert time.monotonic() < deadline, "usage not stored"
            time.sleep(0.1)

        own_redis.stop()
        with pytest.raises(openai.InternalServerError) as closed:
            ask()  # a paid tier fails closed while its limits cannot be checked
        assert closed.value.status_code == 503
        assert "retry-after" in closed.value.response.headers

        own_redis.start()  # empty: no persistence
        deadline = time.monotonic() + 10
        while not redis.Redis.from_url(own_redis.url).exists("{limits}:epoch"):
            assert time.monotonic() < deadline, "counters not rebuilt"
            time.sleep(0.1)
        with pytest.raises(openai.RateLimitError) as still_spent:
            ask()
        assert still_spent.value.code == "insufficient_quota"
        assert records.count() == served
    finally:
        meter.terminate()
        meter.wait(10)
        gateway.stop()
