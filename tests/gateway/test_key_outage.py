"""Through a PostgreSQL outage a cached key is served at once, within a staleness bound."""

import json
import time
from collections.abc import Iterator

import pytest
from django.conf import settings

from customers.services import api_key_revoke
from tests.support.faults import TcpProxy
from tests.support.http import Reply, call
from tests.support.servers import Server, gateway_env, start_gateway
from tests.support.tenants import MODEL, Tenant

pytestmark = pytest.mark.usefixtures("fleet")

# Long enough for the pool's reconnection back-off to reach 8 s between attempts.
OUTAGE_SECONDS = 9.0
# A lookup waits up to 2 s for the pool before it connects on its own.
RECOVERY_SECONDS = 3.0
# The key cache time of tests is 1 s: most requests of the outage find their key's entry
# expired, and its lookup failing (today's lookups wait 2 s for the pool to give up).
SLOWEST_SECONDS = 0.5
CHAT = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
).encode()


@pytest.fixture
def postgres_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(int(settings.DATABASES["default"]["PORT"] or 5432))
    yield proxy
    proxy.close()


def gateway_behind(proxy: TcpProxy, **extra: str) -> Server:
    env = gateway_env() | extra
    db = settings.DATABASES["default"]
    env["DATABASE_URL"] = f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{db['NAME']}"
    return start_gateway(env)


def chat(gateway: Server, key: str) -> Reply:
    return call("POST", gateway.url + "/v1/chat/completions", CHAT, key)


def timed_chats(
    gateway: Server, key: str, seconds: float, until_status: int = 0
) -> list[tuple[int, float, float]]:
    """Chats one after another for `seconds` (or until one gets `until_status`): each one's
    status, how long it took and when it was answered (monotonic)."""
    answers = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.monotonic()
        status = chat(gateway, key).status
        answers.append((status, time.monotonic() - started, time.monotonic()))
        if status == until_status:
            break
        time.sleep(0.05)  # kept a sleep: paces the client, one chat after another
    return answers


def test_a_cached_key_is_served_at_once_during_a_postgres_outage_and_after(
    postgres_proxy: TcpProxy, tenant: Tenant
) -> None:
    gateway = gateway_behind(postgres_proxy)
    try:
        assert chat(gateway, tenant.key).status == 200
        postgres_proxy.cut()
        during = timed_chats(gateway, tenant.key, OUTAGE_SECONDS)
        # Revoked while the gateway cannot see it: applies once PostgreSQL is back.
        api_key_revoke(key_id=tenant.account.api_keys.get().key_id)
        postgres_proxy.restore()
        restored_at = time.monotonic()
        after = timed_chats(gateway, tenant.key, 10.0, until_status=401)
        assert {status for status, _, _ in during} == {200}
        assert max(took for _, took, _ in during + after) < SLOWEST_SECONDS
        # Lookups work again at once, not when the pool's reconnection back-off (by now
        # 8 s between attempts) next tries.
        status, _, refused_at = after[-1]
        assert status == 401 and refused_at - restored_at < RECOVERY_SECONDS
    finally:
        gateway.stop()


def test_a_key_cached_longer_ago_than_the_staleness_bound_fails_closed(
    postgres_proxy: TcpProxy, tenant: Tenant
) -> None:
    gateway = gateway_behind(postgres_proxy, GATEWAY_KEY_STALE_SECONDS="2")
    try:
        assert chat(gateway, tenant.key).status == 200
        postgres_proxy.cut()
        # Kept a sleep, the scenario: the cached key goes stale past the 2 s bound (its
        # last lookup was before the cut).
        time.sleep(2.5)
        refused = chat(gateway, tenant.key)
        assert refused.status == 503
        assert refused.json()["error"]["code"] == "auth_unavailable"
        assert refused.headers["retry-after"] == "2"
        postgres_proxy.restore()
        restored_at = time.monotonic()
        status, _, served_at = timed_chats(gateway, tenant.key, 10.0, until_status=200)[-1]
        assert status == 200 and served_at - restored_at < RECOVERY_SECONDS
    finally:
        gateway.stop()
