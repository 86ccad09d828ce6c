import os
from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("token_factory")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class BrokerOnCluster(Exception):
    """Celery's broker would be a Redis Cluster, which its Redis transport cannot use."""


def broker_check(**_: Any) -> None:
    """Refuse to start on a Redis Cluster as broker, in one line that says what to set:
    kombu's Redis transport keeps a queue's list and its bindings under keys on different
    slots, and a cluster answers its first command MOVED or CROSSSLOT."""
    from redis import RedisError

    from metering.redis_clients import is_cluster

    url = app.conf.broker_url
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://")):
        return
    try:
        cluster = is_cluster(url)
    except RedisError:
        return  # not reachable yet: Celery waits for its broker and says so itself
    if cluster:
        raise BrokerOnCluster(
            f"Celery's broker {url} is a Redis Cluster, which Celery cannot use: set "
            "CELERY_BROKER_URL to a Redis of its own (or RabbitMQ); REDIS_URL may stay the "
            "cluster (docs/deployment.md)."
        )


worker_init.connect(broker_check)
beat_init.connect(broker_check)
