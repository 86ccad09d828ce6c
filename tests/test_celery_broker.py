"""Celery refuses a Redis Cluster as its broker at start, saying what to set instead."""

import pytest
from django.conf import settings

from config.celery import BrokerOnCluster, app, broker_check
from tests.support.redis_cluster import RedisClusterServers


def test_a_worker_refuses_a_cluster_as_broker_and_accepts_one_redis() -> None:
    servers = RedisClusterServers(primaries=3, replicas=0)
    kept = app.conf.broker_url
    try:
        app.conf.broker_url = servers.url
        with pytest.raises(BrokerOnCluster, match="set CELERY_BROKER_URL to a Redis of its own"):
            broker_check()
        app.conf.broker_url = settings.REDIS_URL
        broker_check()  # one Redis: fine
    finally:
        app.conf.broker_url = kept
        servers.stop()
