"""Shared fixtures: the real PostgreSQL and Redis of this machine, real server processes."""

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test.utils import setup_databases, teardown_databases

from customers.models import Account
from customers.services import account_create, api_key_issue, tiers_ensure_defaults
from fleet.services import backend_register
from metering.consumer import Meter
from metering.models import UsageRecord
from tests.servers import ROOT, Server, start_gateway, start_simulator

MODEL = "llama-3.1-8b"
UPSTREAM_MODEL = "llama-3.1-8b-instruct"


@pytest.fixture(scope="session", autouse=True)
def _var_dir() -> None:
    (ROOT / "var").mkdir(exist_ok=True)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
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


def gateway_env() -> dict[str, str]:
    db = settings.DATABASES["default"]
    return {
        "TF_PROFILE": "local",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "GATEWAY_KEY_CACHE_SECONDS": "1",
        "GATEWAY_BACKENDS_REFRESH_SECONDS": "0.5",
        "GATEWAY_BACKEND_EJECT_SECONDS": "1",
        "GATEWAY_LEASE_SECONDS": "3",
        "GATEWAY_REAPER_INTERVAL_SECONDS": "0.5",
        "GATEWAY_MAX_BODY_BYTES": "65536",
        "LOG_LEVEL": "WARNING",
    }


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


@dataclass
class Tenant:
    account: Account
    key: str


def tenant_create(tier: str = "premium") -> Tenant:
    account = account_create(name=f"acct-{uuid.uuid4().hex[:8]}", tier_slug=tier)
    return Tenant(account=account, key=api_key_issue(account=account).plaintext)


@pytest.fixture
def tenant(live_db: None) -> Tenant:
    return tenant_create()


def drain() -> int:
    """Let the meter store every queued usage event now."""
    return Meter.from_settings().drain()


def usage_for(request_id: str, timeout: float = 5.0) -> list[UsageRecord]:
    """The stored usage records of a request, once the meter has stored any.

    Gateways hand records over just after the response, so give them a moment.
    """
    records = UsageRecord.objects.filter(request_id=uuid.UUID(request_id.removeprefix("req_")))
    deadline = time.monotonic() + timeout
    drain()
    while not records.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
        drain()
    return list(records)
