"""P1 through a PostgreSQL outage: the gateway keeps serving, usage waits in the stream."""

import subprocess
import sys
import time
from collections.abc import Iterator

import openai
import pytest
from django.conf import settings

from metering.models import UsageRecord
from tests.support.faults import TcpProxy
from tests.support.servers import ROOT, Server, gateway_env, start_gateway
from tests.support.tenants import MODEL, Tenant
from tests.support.waiting import wait_until

OUTAGE_SECONDS = 4.0


@pytest.fixture
def postgres_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(int(settings.DATABASES["default"]["PORT"] or 5432))
    yield proxy
    proxy.close()


def records_of(tenant: Tenant) -> int:
    return UsageRecord.objects.filter(account_id=tenant.account.pk).count()


def wait_for(tenant: Tenant, count: int, timeout: float) -> None:
    wait_until(
        lambda: records_of(tenant) >= count,
        timeout=timeout,
        interval=0.2,
        what=f"{count} records stored",
        explain=lambda: f"{records_of(tenant)} stored",
    )


@pytest.mark.usefixtures("fleet")
def test_usage_made_while_postgres_is_down_is_stored_once_it_is_back(
    postgres_proxy: TcpProxy, tenant: Tenant
) -> None:
    env = gateway_env()
    db = settings.DATABASES["default"]
    env["DATABASE_URL"] = f"postgres://{db['USER']}@127.0.0.1:{postgres_proxy.port}/{db['NAME']}"
    gateway: Server = start_gateway(env)
    meter = subprocess.Popen([sys.executable, "manage.py", "meter"], cwd=ROOT, env=env)
    try:
        api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)

        def ask() -> None:
            api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )

        for _ in range(5):
            ask()
        wait_for(tenant, 5, timeout=15)

        postgres_proxy.cut()
        outage_started = time.monotonic()
        for _ in range(10):
            ask()  # served: the key is known, usage goes to the stream
        # Kept a sleep, the scenario: the outage lasts OUTAGE_SECONDS.
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))
        assert records_of(tenant) == 5, "nothing can be stored while PostgreSQL is away"

        postgres_proxy.restore()
        wait_for(tenant, 15, timeout=30)
        time.sleep(1.0)  # kept a sleep: a duplicate would be stored by now (an absence)
        assert records_of(tenant) == 15
    finally:
        meter.terminate()
        meter.wait(10)
        gateway.stop()
