"""The hot path's lean Redis connection (gateway/resp.py) against real redis-servers: replies
in order and typed as redis-py's, errors as redis-py's exceptions, and a lost or unreachable
Redis reported the way the gateway's fault handling expects."""

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from gateway.resp import RespConnection
from tests.support.redis_server import RedisServer
from tests.support.servers import free_port


async def test_a_pipeline_gets_its_replies_in_order_as_redis_py_would() -> None:
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    connection = RespConnection.like(client)
    key = f"test-resp-{uuid.uuid4().hex}"
    try:
        replies = await connection.execute(
            [
                ("SET", key, "1.5"),
                ("INCRBYFLOAT", key, 2.25),
                ("GET", key),
                ("GET", key + ":missing"),
                ("EVAL", "return {1, 'two', {3}}", 0),
                ("EVALSHA", "0" * 40, 0),
                ("EVAL", "return redis.error_reply('ERR refused')", 0),
                ("RPUSH", key + ":list", b"\x00\xff", 7),
            ]
        )
        assert replies[:5] == [b"OK", b"3.75", b"3.75", None, [1, b"two", [3]]]
        assert isinstance(replies[5], NoScriptError)
        assert isinstance(replies[6], ResponseError) and "refused" in str(replies[6])
        assert replies[7] == 2
        # The database of the client it was made like, not database 0.
        assert await client.get(key) == b"3.75"
        assert await client.lrange(key + ":list", 0, -1) == [b"\x00\xff", b"7"]
    finally:
        await client.delete(key, key + ":list")
        await client.aclose()
        connection.close()


async def test_concurrent_pipelines_each_get_their_own_replies() -> None:
    connection = RespConnection.like(aioredis.Redis.from_url(settings.REDIS_URL))
    try:
        results = await asyncio.gather(
            *(
                connection.execute([("ECHO", f"{i}-{j}") for j in range(i % 5 + 1)])
                for i in range(50)
            )
        )
        for i, replies in enumerate(results):
            assert replies == [f"{i}-{j}".encode() for j in range(i % 5 + 1)]
    finally:
        connection.close()


async def test_a_redis_that_dies_fails_the_pipelines_waiting_and_the_next_reconnects() -> None:
    server = RedisServer()
    connection = RespConnection.like(aioredis.Redis.from_url(server.url))
    try:
        assert await connection.execute([("SET", "k", "v")]) == [b"OK"]
        waiting = asyncio.ensure_future(connection.execute([("BLPOP", "nothing", 30)]))
        await asyncio.sleep(0.2)
        server.kill()
        with pytest.raises(ConnectionError):
            await waiting
        with pytest.raises(ConnectionError):
            await connection.execute([("PING",)])
        server.start()
        assert await connection.execute([("PING",)]) == [b"PONG"]
    finally:
        connection.close()
        server.kill()


async def test_an_unreachable_redis_is_a_connection_error() -> None:
    connection = RespConnection(port=free_port(), connect_timeout=1.0)
    with pytest.raises(ConnectionError, match="Error connecting"):
        await connection.execute([("PING",)])
