"""A production gateway refuses a Redis that keeps nothing across a restart, in one clear log
line saying what would be lost, unless told to accept it; where CONFIG is not allowed it warns."""

import json
import logging
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.inflight import VolatileRedis, persistence_check
from tests.support.redis_server import RedisServer
from tests.support.servers import ROOT, free_port, gateway_env, start_gateway


@pytest.fixture
def volatile(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, appendonly=False)
    yield server
    server.kill()


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, appendonly=True)
    yield server
    server.kill()


def production_env(redis_url: str) -> dict[str, str]:
    return {
        **gateway_env(),
        "TF_PROFILE": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "REDIS_URL": redis_url,
    }


def test_a_production_gateway_refuses_redis_without_persistence_in_one_line(
    live_db: None, volatile: RedisServer
) -> None:
    uvicorn = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--lifespan", "on"]
    result = subprocess.run(
        [*uvicorn, "--port", str(free_port())],
        cwd=ROOT,
        env=production_env(volatile.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "appendonly" in line]
    assert len(lines) == 1, result.stderr
    refusal = json.loads(lines[0])
    assert refusal["level"] == "critical"
    assert refusal["event"].startswith("Refusing to start: Redis does not persist")
    assert "never billed" in refusal["event"]
    assert "GATEWAY_ALLOW_VOLATILE_REDIS=true" in refusal["event"]


def test_a_production_gateway_starts_on_redis_with_an_append_only_file(
    live_db: None, durable: RedisServer
) -> None:
    start_gateway(production_env(durable.url)).stop()


async def test_the_opt_out_runs_on_volatile_redis_with_a_loud_warning(
    volatile: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = aioredis.Redis.from_url(volatile.url)
    with caplog.at_level(logging.WARNING, logger="gateway.inflight"):
        await persistence_check(client, production=True, allow_volatile=True)
        with pytest.raises(VolatileRedis):
            await persistence_check(client, production=True, allow_volatile=False)
        await persistence_check(client, production=False, allow_volatile=False)
    await client.aclose()
    [warning] = caplog.records
    assert warning.levelname == "WARNING"
    assert "GATEWAY_ALLOW_VOLATILE_REDIS is set" in warning.getMessage()
    assert "never billed" in warning.getMessage()


async def test_where_config_is_not_allowed_it_warns_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Managed Redis services forbid CONFIG; its persistence is the operator's to check."""
    managed = RedisServer(tmp_path, appendonly=False, extra=("--rename-command", "CONFIG", ""))
    client = aioredis.Redis.from_url(managed.url)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.inflight"):
            await persistence_check(client, production=True, allow_volatile=False)
    finally:
        await client.aclose()
        managed.kill()
    [warning] = caplog.records
    assert warning.getMessage().startswith("cannot check that Redis persists")
