"""The one way to connect to the project's Redis: a single server or a Redis Cluster.

`REDIS_URL` names either. Which one it is, is asked of the server itself once per process
and address (`INFO cluster`), so the same URL works whichever it names; a cluster gets
redis-py's cluster clients, which route each command to the primary of its key's slot and
follow the cluster through failovers and resharding. Every script and pipeline the project
runs keeps its keys on one slot (the `{...}` hash tags of metering/events.py, gateway/limits.py,
gateway/queueing.py), which is what makes that possible.

The cluster clients are typed as the single-server ones: they offer the same commands, and a
caller that needs to know which it has asks `is_cluster`.
"""

import logging
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

log = logging.getLogger(__name__)

# URL -> whether it names a cluster node, once known.
_CLUSTER: dict[str, bool] = {}


def is_cluster(url: str) -> bool:
    """Whether the Redis at `url` is a node of a Redis Cluster, asked once per process and
    address. Raises redis.RedisError where it cannot be reached (nothing is remembered then)."""
    if url not in _CLUSTER:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            info: Any = client.info("cluster")
        finally:
            client.close()
        _CLUSTER[url] = bool(info.get("cluster_enabled"))
    return _CLUSTER[url]


def _cluster_or_unknown(url: str) -> bool:
    """`is_cluster`, or False where Redis cannot be reached now: a process that starts while
    Redis is away (the gateway serves fail-open tiers through its spool meanwhile) gets a
    single-server client, and says so."""
    try:
        return is_cluster(url)
    except redis.RedisError as exc:
        log.warning(
            "cannot ask Redis whether it is a cluster (%s); connecting as to one server: "
            "were it a cluster, restart this process once it answers",
            exc,
        )
        return False


def redis_connect(url: str, **options: Any) -> redis.Redis:
    """A client of the Redis (or Redis Cluster) at `url`; `options` as redis-py takes them."""
    if _cluster_or_unknown(url):
        return cast(redis.Redis, RedisCluster.from_url(url, **options))
    return redis.Redis.from_url(url, **options)


def redis_connect_async(url: str, **options: Any) -> aioredis.Redis:
    """`redis_connect` for asyncio."""
    if _cluster_or_unknown(url):
        return cast(aioredis.Redis, AsyncRedisCluster.from_url(url, **options))
    return aioredis.Redis.from_url(url, **options)
