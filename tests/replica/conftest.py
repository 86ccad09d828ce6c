"""The read replica's tests (docs/deployment.md, "PostgreSQL: primary and read replica"): a
primary and its streaming replica of this run's own, migrated and seeded once, and the console
served by one process that reads both (DATABASE_URL, DATABASE_REPLICA_URL)."""

import json
from collections.abc import Iterator

import pytest
from django.conf import settings

from tests.replica.support import Console
from tests.support.manage import manage
from tests.support.postgres_pair import PostgresPair
from tests.support.servers import gateway_env, start_gateway

DATABASE = "tf"


@pytest.fixture(scope="session")
def pair() -> Iterator[PostgresPair]:
    servers = PostgresPair()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def console(pair: PostgresPair) -> Iterator[Console]:
    pair.sql("primary", f"CREATE DATABASE {DATABASE}")
    env = {
        "TF_PROFILE": "local",
        "DATABASE_URL": pair.url("primary", DATABASE),
        "REDIS_URL": settings.REDIS_URL,
    }
    migrated = manage("migrate", "-v0", **env)
    assert migrated.returncode == 0, migrated.stderr
    seed = "from tests.replica.seed import seed; seed()"
    seeded = manage("shell", "--no-imports", "-c", seed, **env)
    assert seeded.returncode == 0, seeded.stderr
    ids = json.loads(seeded.stdout.strip().splitlines()[-1])
    replica = pair.url("replica", DATABASE)
    server = start_gateway(
        {**gateway_env(), **env, "DATABASE_REPLICA_URL": replica, "LOG_LEVEL": "INFO"}
    )
    try:
        yield Console(server, **ids)
    finally:
        server.stop()
