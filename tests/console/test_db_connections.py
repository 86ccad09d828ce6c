"""PostgreSQL connections stay bounded under load (issue 12): one pool per process.

Under ASGI each request runs on a thread of its own; with persistent connections every thread
kept one, and a worker ran PostgreSQL out of connections. A real uvicorn worker is loaded
with a few hundred concurrent management API calls while its connections are counted in
pg_stat_activity (matched to the worker by their client ports).
"""

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import psutil
from django.db import connection

from tests.console.api_support import staff_token, superuser_create
from tests.support.servers import gateway_env, start_gateway

POOL_MAX = 4
# The gateway's own psycopg AsyncConnectionPool (key lookups, refreshers; gateway/app.py).
GATEWAY_POOL_MAX = 4
REQUESTS = 400
CONCURRENCY = 200


def test_a_worker_holds_no_more_connections_than_its_pools(fleet: None) -> None:
    token = staff_token(superuser_create(), ["read"])
    server = start_gateway({**gateway_env(), "DB_POOL_MAX_SIZE": str(POOL_MAX)})
    try:
        with _peak_connections(server.process.pid) as peak:
            statuses = asyncio.run(_load(f"{server.url}/api/v1/accounts/", token))
        after = _connections(server.process.pid)
    finally:
        server.stop()
    assert statuses == {200: REQUESTS}
    assert 1 <= peak[0] <= POOL_MAX + GATEWAY_POOL_MAX, peak[0]
    assert after <= POOL_MAX + GATEWAY_POOL_MAX


async def _load(url: str, token: str) -> dict[int, int]:
    """REQUESTS calls, CONCURRENCY at a time; how many got each status."""
    gate = asyncio.Semaphore(CONCURRENCY)
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

        async def one() -> int:
            async with gate, session.get(url) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(REQUESTS)))
    return {status: statuses.count(status) for status in set(statuses)}


@contextmanager
def _peak_connections(pid: int) -> Iterator[list[int]]:
    """The most connections `pid` held at once while the block ran (sampled every 20 ms)."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _connections(pid))
        connection.close()  # this thread's own, back to the pool

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def _connections(pid: int) -> int:
    """The process's connections to the test database, as PostgreSQL lists them."""
    ports = {
        conn.laddr.port
        for conn in psutil.Process(pid).net_connections("tcp")
        if conn.raddr and conn.raddr.port == int(connection.settings_dict["PORT"] or 5432)
    }
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT client_port FROM pg_stat_activity WHERE datname = current_database()"
        )
        return sum(1 for (port,) in cursor.fetchall() if port in ports)
