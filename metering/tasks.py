from celery import shared_task
from django.utils import timezone

from metering.services import usage_partitions_ensure


@shared_task(name="metering.ensure_usage_partitions")
def ensure_usage_partitions() -> list[str]:
    return usage_partitions_ensure(today=timezone.now().date())
