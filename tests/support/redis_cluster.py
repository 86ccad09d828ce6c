"""The tests' Redis Cluster: three primaries and three replicas on loopback ports, each with an
append-only file. It is built by bench/redis_cluster.py (the benchmarks use it too, and bench/
imports nothing from tests/); what only tests need, waiting out a failover, is here."""

import time

# Re-exported: tests/conftest.py and the cluster's tests import it from here.
from bench.redis_cluster import RedisClusterServers
from tests.support.waiting import wait_until

__all__ = ["RedisClusterServers", "failover_wait"]


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
