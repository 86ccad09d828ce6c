"""A lean Redis connection for the hot path's pipelines of script calls.

redis-py's asyncio client encodes every argument of every command in Python (its pure-Python
packer) and wraps each reply in layers of generic machinery: with six EVALSHA of ~20 arguments
per request that was a fifth of the gateway's CPU (docs/benchmarks.md, issue 19). Here
commands are packed by hiredis' C packer and replies parsed by hiredis' reader, over one
asyncio connection with the replies matched to their pipelines in order. It does only what
`ScriptBatcher` needs: send a pipeline, get its replies (errors as redis-py's exception
classes, so callers catch what they always caught); everything else keeps redis-py.

It connects as the redis-py client it is built from (`RespConnection.like`): same host or
socket, database, credentials, TLS and timeouts, so there is one Redis configuration.
"""

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[str | bytes | int | float]


class _Pipeline:
    """Replies still owed to one pipeline."""

    __slots__ = ("future", "left", "replies")

    def __init__(self, future: "asyncio.Future[list[Any]]", count: int) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: deque[_Pipeline] = deque()
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while (reply := self.reader.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            pipeline = waiting[0]
            if isinstance(reply, hiredis.ReplyError):
                reply = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
            pipeline.replies.append(reply)
            pipeline.left -= 1
            if not pipeline.left:
                waiting.popleft()
                if not pipeline.future.done():
                    pipeline.future.set_result(pipeline.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            RedisConnectionError(f"Connection to Redis lost: {exc}" if exc else "Redis closed")
        )

    def _fail(self, error: Exception) -> None:
        self.lost = error
        if self.transport is not None:
            self.transport.close()
        while self.waiting:
            future = self.waiting.popleft().future
            if not future.done():
                future.set_exception(error)


class RespConnection:
    """One connection to Redis, opened on first use and again after it is lost."""

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        connect_timeout: float | None = None,
        timeout: float | None = None,
    ) -> None:
        self._address = (host, port, path)
        self._hello: list[Command] = []
        if password is not None:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._hello.append(("SELECT", db))
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def like(cls, client: aioredis.Redis) -> "RespConnection":
        """A connection to the Redis `client` talks to, as it connects."""
        kwargs = client.connection_pool.connection_kwargs
        tls = None
        if kwargs.get("ssl_cert_reqs") is not None or "ssl_ca_certs" in kwargs:
            tls = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
            if kwargs.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        return cls(
            host=kwargs.get("host", "localhost"),
            port=int(kwargs.get("port", 6379)),
            path=kwargs.get("path"),
            db=int(kwargs.get("db", 0)),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            tls=tls,
            connect_timeout=kwargs.get("socket_connect_timeout"),
            timeout=kwargs.get("socket_timeout"),
        )

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands as one pipeline; their replies in order, an error reply as its
        redis-py exception (not raised). Raises ConnectionError or TimeoutError where Redis
        cannot be reached or does not answer: the connection is then dropped, and the next
        call opens a new one."""
        protocol = await self._connected()
        replies = self._send(protocol, commands)
        if self._timeout is None:
            return await replies
        try:
            return await asyncio.wait_for(replies, self._timeout)
        except TimeoutError:
            protocol._fail(RedisTimeoutError("Timeout reading from Redis"))
            raise RedisTimeoutError("Timeout reading from Redis") from None

    def _send(
        self, protocol: _Protocol, commands: Sequence[Command]
    ) -> "asyncio.Future[list[Any]]":
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if not commands:
            future.set_result([])
            return future
        protocol.waiting.append(_Pipeline(future, len(commands)))
        assert protocol.transport is not None
        # (hiredis' stub types the argument as a 1-tuple)
        packed = [hiredis.pack_command(tuple(c)) for c in commands]  # type: ignore[arg-type]
        protocol.transport.write(b"".join(packed))
        return future

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is None or self._protocol.lost is not None:
                self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        host, port, path = self._address
        try:
            if path is not None:
                opening = loop.create_unix_connection(_Protocol, path)
            else:
                opening = loop.create_connection(_Protocol, host, port, ssl=self._tls)
            transport, protocol = await asyncio.wait_for(opening, self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            where = path or f"{host}:{port}"
            raise RedisConnectionError(f"Error connecting to Redis at {where}: {exc}") from exc
        # uvloop may call connection_made only after the connection is handed back.
        protocol.transport = transport
        if self._hello:
            for reply in await asyncio.wait_for(self._send(protocol, self._hello), self._timeout):
                if isinstance(reply, Exception):
                    protocol._fail(RedisConnectionError(str(reply)))
                    raise reply
        return protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol._fail(RedisConnectionError("Connection closed by the gateway"))
            self._protocol = None
