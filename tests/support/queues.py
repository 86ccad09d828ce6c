"""The admission queue's state in Redis (gateway/queueing.py), for tests that drive queues of
their own."""

import redis.asyncio as aioredis

from gateway.queueing import pool_keys
from tests.support.waiting import wait_until_async


async def wait_listening(client: aioredis.Redis, name: str) -> None:
    """Until a connection named `name` has subscribed to the grants (AdmissionQueue.listen):
    grants published before that would never reach the queue's waiters."""

    async def subscribed() -> bool:
        connections = await client.client_list()
        return any(c.get("name") == name and int(c.get("psub", 0)) > 0 for c in connections)

    await wait_until_async(subscribed, what=f"{name} to subscribe to the grants")


async def queued(client: aioredis.Redis, pool: str, klass: int) -> int:
    """Requests of priority class `klass` waiting in `pool`'s queue."""
    return int(await client.zcard(pool_keys(pool)[3 + klass]))
