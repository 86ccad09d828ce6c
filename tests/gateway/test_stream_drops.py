"""Clients that drop their streams leave nothing behind in the gateway's memory."""

import asyncio
import json
import os
from collections.abc import Iterator

import psutil
import pytest

from tests.support.ledger import drain
from tests.support.servers import Server, gateway_env, start_gateway
from tests.support.tenants import MODEL, Tenant, tenant_unlimited

WARM_UP = 1000  # drops before the first measure: caches, pools and arenas reach their size
# 5,000 in CI (~7 s); TF_SOAK_DROPS=20000 for the full soak.
DROPS = int(os.environ.get("TF_SOAK_DROPS", "5000"))
AT_ONCE = 20
# Each dropped stream used to leak ~14-19 KB (tens of MB over the soak); after the warm-up
# the gateway stays within ~2 MB however many streams are dropped.
GROWTH_LIMIT_BYTES = 5 * 1024 * 1024


@pytest.fixture
def gateway_alone(fleet: None) -> Iterator[Server]:
    server = start_gateway(gateway_env())
    yield server
    server.stop()


@pytest.fixture
def unlimited() -> Tenant:
    return tenant_unlimited()


def chat_request(key: str) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 4000,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def drop_streams(gateway: Server, key: str, count: int) -> None:
    """Start `count` streams, `AT_ONCE` at a time, and hang up on each after its first token."""
    request = chat_request(key)

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        await reader.readuntil(b"data: ")  # the stream is flowing
        writer.transport.abort()

    async def worker(share: int) -> None:
        for _ in range(share):
            await one()

    shares = [count // AT_ONCE + (i < count % AT_ONCE) for i in range(AT_ONCE)]
    await asyncio.gather(*(worker(share) for share in shares))


def test_dropped_streams_do_not_grow_the_gateway(gateway_alone: Server, unlimited: Tenant) -> None:
    process = psutil.Process(gateway_alone.process.pid)
    asyncio.run(drop_streams(gateway_alone, unlimited.key, WARM_UP))
    before = process.memory_info().rss
    asyncio.run(drop_streams(gateway_alone, unlimited.key, DROPS))
    grown = process.memory_info().rss - before
    drain()  # the usage of every dropped stream, so later tests do not store it
    print(f"gateway RSS grew {grown / 2**20:.2f} MB over {DROPS} dropped streams")
    assert grown < GROWTH_LIMIT_BYTES, f"{grown / 2**20:.1f} MB after {DROPS} dropped streams"
