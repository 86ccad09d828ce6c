"""Shared fixtures: the real PostgreSQL and Redis of this machine, real server processes."""

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test.utils import setup_databases, teardown_databases

from customers.services import tiers_ensure_defaults
from fleet.services import backend_register
from metering.redis_clients import redis_connect
from tests.support.redis_cluster import RedisClusterServers
from tests.support.servers import ROOT, Server, gateway_env, start_gateway, start_simulator
from tests.support.tenants import MODEL, UPSTREAM_MODEL, Tenant, tenant_create


@pytest.fixture(scope="session", autouse=True)
def _var_dir() -> None:
    (ROOT / "var").mkdir(exist_ok=True)


@pytest.fixture(scope="session", autouse=True)
def _redis_cluster() -> Iterator[None]:
    """With TF_TEST_REDIS_CLUSTER=1, the run's Redis is a Redis Cluster of its own (three
    primaries, three replicas) instead of REDIS_URL: `make test` runs the tests marked
    `redis_cluster` (the gateway's limits, queue and exactly-once metering) that way too."""
    if os.environ.get("TF_TEST_REDIS_CLUSTER") != "1":
        yield
        return
    servers = RedisClusterServers()
    settings.REDIS_URL = servers.url
    try:
        yield
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis_connect(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def live_db(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Committed data in the test database, visible to gateway processes; kept for the session.

    pytest-django only creates the test database when a collected test is marked django_db,
    so a run of integration tests alone creates it here.
    """
    with django_db_blocker.unblock():
        created = None
        if not connection.settings_dict["NAME"].startswith("test_"):
            created = setup_databases(verbosity=0, interactive=False, aliases={"default"})
        assert connection.settings_dict["NAME"].startswith("test_")
        tiers_ensure_defaults()
        yield
        if created is not None:
            teardown_databases(created, verbosity=0)


@pytest.fixture(scope="session")
def simulator() -> Iterator[Server]:
    server = start_simulator("--model", UPSTREAM_MODEL, "--seed", "7", "--speedup", "20")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fleet(live_db: None, simulator: Server, redis_client: redis.Redis) -> None:
    backend_register(
        name="sim-a",
        base_url=simulator.url,
        upstream_model=UPSTREAM_MODEL,
        public_models=[MODEL],
        supports_priority=True,
    )


@pytest.fixture(scope="session")
def gateway(fleet: None) -> Iterator[Server]:
    server = start_gateway(gateway_env())
    yield server
    server.stop()


@pytest.fixture
def tenant(live_db: None) -> Tenant:
    return tenant_create()
