"""Redis servers of a benchmark's or a test's own, on loopback ports, each with an append-only
file fsynced every second (as production must run them): one redis-server (`redis_server`), or
a Redis Cluster (`RedisClusterServers`) of N primaries with their replicas, made as an operator
makes one (`redis-cli --cluster create`; with fewer than the three primaries it insists on,
the same steps by hand).

They live here, not in tests/, because bench/ imports nothing from tests/: the benchmarks and
the tests both use them (tests/support/redis_cluster.py re-exports the cluster). Tests kill a
primary (SIGKILL) to watch its replica take over; `stop` removes every trace.
"""

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from bench.ports import free_port

# How long a primary may be silent before its replica is elected in its place: a second, so
# that tests see a failover quickly (production clusters use 5 to 15 s).
NODE_TIMEOUT_MS = 1000

LOGFILE = "redis.log"


def redis_server_command(port: int, directory: Path, *extra: str) -> list[str]:
    """A redis-server on 127.0.0.1:`port` keeping its files in `directory`: an append-only
    file fsynced every second and no snapshots, as production runs it."""
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        # In its directory, so that a server that failed to start can say why.
        "--logfile",
        LOGFILE,
        *extra,
    ]


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """One redis-server on a spare port: its URL and process, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tf-redis-") as directory:
        port = spare_port()
        process = subprocess.Popen(redis_server_command(port, Path(directory)))
        try:
            wait_answers(port, process, Path(directory))
            yield f"redis://127.0.0.1:{port}/0", process
        finally:
            process.terminate()
            process.wait(30)


class RedisClusterServers:
    def __init__(self, *, primaries: int = 3, replicas: int = 1) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tf-redis-cluster-"))
        self.ports = [spare_port() for _ in range(primaries * (1 + replicas))]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        try:
            for port in self.ports:
                self._start(port)
            if primaries >= 3:
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
            else:
                self._assemble(primaries)
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
        self.processes[port] = process = subprocess.Popen(
            redis_server_command(
                port,
                node,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # A replica syncs at once, not after the 5 s a primary waits for others.
                "--repl-diskless-sync-delay",
                "0",
            )
        )
        wait_answers(port, process, node)

    def _assemble(self, primaries: int) -> None:
        """What `redis-cli --cluster create` does, for the one or two primaries it refuses:
        the first `primaries` nodes take equal ranges of slots in order, every node meets the
        others, and the rest are their replicas in turn."""
        clients = {port: redis.Redis(port=port) for port in self.ports}
        heads = self.ports[:primaries]
        try:
            for index, port in enumerate(heads):
                low = index * REDIS_CLUSTER_HASH_SLOTS // primaries
                high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // primaries - 1
                clients[port].cluster("set-config-epoch", index + 1)
                clients[port].cluster("addslotsrange", low, high)
            for port in self.ports[1:]:
                clients[port].cluster("meet", "127.0.0.1", self.ports[0])

            def all_met() -> bool:
                for client in clients.values():
                    nodes: Any = client.cluster("nodes")
                    known = [n for n in nodes.values() if "handshake" not in n["flags"]]
                    if len(known) != len(self.ports):
                        return False
                return True

            _wait(all_met, what="every node to know the others")
            for index, port in enumerate(self.ports[primaries:]):
                head = clients[heads[index % primaries]].cluster("myid")
                clients[port].cluster("replicate", head)
        finally:
            for client in clients.values():
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

        _wait(ok, timeout=timeout, what="the Redis Cluster to be ok")

    def client(self) -> RedisCluster:
        """A cluster client that starts from every live node."""
        nodes = [ClusterNode("127.0.0.1", p) for p in self.processes]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes)

    def primary_of(self, key: str) -> int:
        """The port of the primary that serves `key`'s slot now."""
        client = self.client()
        try:
            node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
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


def spare_port() -> int:
    """A free port whose cluster bus port (10,000 above it) is free too."""
    return free_port(also=(10_000,))


def wait_answers(
    port: int, process: subprocess.Popen[bytes] | None = None, directory: Path | None = None
) -> None:
    """Until the redis-server on `port` answers PING (it has loaded its files). If its
    `process` exits first, fail at once with the end of the log it kept in `directory`."""
    client = redis.Redis(port=port, socket_timeout=1)

    def answers() -> bool:
        if process is not None and process.poll() is not None:
            log = directory / LOGFILE if directory is not None else None
            said = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"redis-server on port {port} exited ({process.returncode}): {said}")
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    try:
        _wait(answers, what=f"redis-server on port {port} to answer")
    finally:
        client.close()


def _wait(condition: Callable[[], bool], *, what: str, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; past `timeout` seconds fail, naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
