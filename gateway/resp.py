"""A lean Redis connection for the hot path's pipelines of script calls.

redis-py's asyncio client encodes every argument of every command in Python (its pure-Python
packer) and wraps each reply in layers of generic machinery: with six EVALSHA of ~20 arguments
per request that was a fifth of the gateway's CPU (docs/benchmarks.md, issue 19). Here
commands are packed by hiredis' C packer and replies parsed by hiredis' reader, over one
asyncio connection with the replies matched to their pipelines in order. It does only what
`ScriptBatcher` needs: send a pipeline, get its replies (errors as redis-py's exception
classes, so callers catch what they always caught); everything else keeps redis-py.

It connects as the redis-py client it is built from (`RespConnection.like`): same host or
socket, database, credentials, TLS and timeouts, so there is one Redis configuration. On a
Redis Cluster, `RespCluster` keeps one such connection per primary and sends each command to
the primary of its key's slot, as redis-py's cluster client maps them.
"""

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.metrics import UNREPLICATED

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
        return cls.from_kwargs(client.connection_pool.connection_kwargs)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "RespConnection":
        """A connection as redis-py connects with these connection arguments."""
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


# A cluster's replies that say "ask again, elsewhere or later": the slot moved (a failover or
# resharding), or the cluster is between states. The command did not run.
_REROUTE = (MovedError, AskError, ClusterDownError, TryAgainError)
# How often a command is sent again after such a reply, the slot map refreshed in between.
_REROUTE_ATTEMPTS = 5
_REROUTE_PAUSE = 0.05
# The most a durable command's reply waits for a replica to confirm its writes (WAIT).
_REPLICA_WAIT_MS = 200


class RespCluster:
    """`RespConnection`s to the primaries of a Redis Cluster, one each: every command goes to
    the primary of the slot of its routing key, the pipelines to different primaries at once.

    The slot map is redis-py's (`client`, an asyncio RedisCluster). A command answered MOVED,
    ASK, TRYAGAIN or CLUSTERDOWN did not run: the map is refreshed and the command sent again,
    up to _REROUTE_ATTEMPTS times. A primary that cannot be reached raises ConnectionError for
    its commands, as a single Redis would (they may or may not have run), and the map is
    refreshed before the next pipeline, so that once its replica has taken over, commands go
    there.

    Replication is asynchronous: a primary killed a moment after it answered takes with it
    what its replica had not received yet. Commands executed as durable therefore get their
    replies only once a replica has confirmed their writes (WAIT 1 closes each node's
    pipeline). A primary with no replica to confirm (its own has not come back since it took
    over) answers on its own after _REPLICA_WAIT_MS; `tf_redis_unreplicated_settles_total`
    counts those commands.
    """

    def __init__(self, client: AsyncRedisCluster) -> None:
        self._client = client
        self._connections: dict[str, RespConnection] = {}
        self._mapped = False
        self._stale = True

    async def execute(
        self, commands: Sequence[Command], keys: Sequence[str], *, durable: bool = False
    ) -> list[Any]:
        """`RespConnection.execute` for commands each routed by its key in `keys`; `durable`
        ones answered once a replica has their writes."""
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(_REROUTE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(_REROUTE_PAUSE * attempt)
            await self._refresh()
            by_node: dict[str, list[int]] = {}
            for i in todo:
                node = self._client.get_node_from_key(keys[i])
                if node is None:
                    raise ClusterDownError(f"no node serves the slot of {keys[i]}")
                by_node.setdefault(self._connect(node), []).append(i)
            sent = await asyncio.gather(
                *(
                    self._node_execute(name, indices, commands, durable)
                    for name, indices in by_node.items()
                ),
                return_exceptions=True,
            )
            todo = []
            for indices, answered in zip(by_node.values(), sent, strict=True):
                if isinstance(answered, BaseException):
                    self._stale = True
                    answered = [answered] * len(indices)
                for i, reply in zip(indices, answered, strict=True):
                    replies[i] = reply
                    if isinstance(reply, _REROUTE):
                        todo.append(i)
            if not todo:
                break
            self._stale = True
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, RedisError):
                raise reply
        return replies

    async def _node_execute(
        self, name: str, indices: list[int], commands: Sequence[Command], durable: bool
    ) -> list[Any]:
        """One node's commands, in `indices` order; if `durable`, closed by WAIT."""
        connection = self._connections[name]
        sent = [commands[i] for i in indices]
        if not durable:
            return await connection.execute(sent)
        *replies, replicas = await connection.execute([*sent, ("WAIT", 1, _REPLICA_WAIT_MS)])
        if replicas == 0:
            UNREPLICATED.inc(len(indices))
        return replies

    async def _refresh(self) -> None:
        if not self._stale:
            return
        try:
            if self._mapped:
                await self._client.nodes_manager.initialize()
            else:
                await self._client.initialize()
                self._mapped = True
        except RedisError:
            return  # the map in hand serves; the commands sent on it say what is wrong
        self._stale = False

    def _connect(self, node: ClusterNode) -> str:
        if node.name not in self._connections:
            self._connections[node.name] = RespConnection.from_kwargs(node.connection_kwargs)
        return node.name

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
