"""A Redis Cluster of a test run's own: three primaries and three replicas on loopback ports,
each with an append-only file, made as an operator makes one (`redis-cli --cluster create`).

Tests kill a primary (SIGKILL) to watch its replica take over; `stop` removes every trace.
"""

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.support.waiting import wait_until

# How long a primary may be silent before its replica is elected in its place: a second, so
# that tests see a failover quickly (production clusters use 5 to 15 s).
NODE_TIMEOUT_MS = 1000


class RedisClusterServers:
    def __init__(self, *, primaries: int = 3, replicas: int = 1) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tf-redis-cluster-"))
        self.ports = [_cluster_port() for _ in range(primaries * (1 + replicas))]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        try:
            for port in self.ports:
                self._start(port)
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    str(replicas),
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=60,
            )
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        # Named by a replica: tests kill primaries, and a process started after a failover
        # must still reach the cluster by its URL.
        self.url = f"redis://127.0.0.1:{self.ports[-1]}/0"

    def _start(self, port: int) -> None:
        node = self.directory / str(port)
        node.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(node),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                # A replica syncs at once, not after the 5 s a primary waits for others.
                "--repl-diskless-sync-delay",
                "0",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port)
        try:
            wait_until(lambda: _answers(client), what=f"redis-server on port {port} to answer")
        finally:
            client.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ok, with every slot served, and every
        replica has synced with its primary (only then can it take over)."""

        def ok() -> bool:
            for port in self.processes:
                client = redis.Redis(port=port, socket_timeout=1)
                try:
                    info: Any = client.cluster("info")
                    replication: Any = client.info("replication")
                except redis.RedisError:
                    return False
                finally:
                    client.close()
                if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
            return True

        wait_until(ok, timeout=timeout, what="the Redis Cluster to be ok")

    def client(self) -> RedisCluster:
        """A cluster client that starts from every live node."""
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.processes])

    def primary_of(self, key: str) -> int:
        """The port of the primary that serves `key`'s slot now."""
        client = self.client()
        try:
            node = client.get_node_from_key(key)
            return int(node.port)
        finally:
            client.close()

    def kill(self, port: int) -> None:
        """SIGKILL one node: what its clients had written in the last second may be lost."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed node again, from its own files: it rejoins (a former primary as a
        replica of the one elected in its place)."""
        self._start(port)

    def flush(self) -> None:
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()
        for process in self.processes.values():
            process.wait(10)
        self.processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above it, at most 65,535) is free too."""
    while True:
        port = random.randrange(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.BusyLoadingError):
        return False


def failover_wait(
    servers: RedisClusterServers, key: str, dead: int, timeout: float = 20.0
) -> float:
    """Seconds until `key`'s slot is served by a node other than `dead`, the cluster ok."""
    began = time.monotonic()
    wait_until(
        lambda: servers.primary_of(key) != dead, timeout=timeout, what="the replica to take over"
    )
    servers.wait_ready(timeout)
    return time.monotonic() - began
