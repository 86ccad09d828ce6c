from celery import shared_task
from django.conf import settings
from django.utils import timezone

from metering.attribution import energy_attribute_ready, energy_calibrate_ready
from metering.services import usage_partitions_ensure
from metering.telemetry import Outcome, telemetry_scrape


@shared_task(name="metering.ensure_usage_partitions")
def ensure_usage_partitions() -> list[str]:
    return usage_partitions_ensure(today=timezone.now().date())


@shared_task(name="metering.scrape_telemetry", ignore_result=True)
def scrape_telemetry() -> dict[str, Outcome]:
    seconds = settings.METERING.telemetry_seconds
    # Half a period: a tick that runs late still scrapes, a burst of queued ticks does not.
    return telemetry_scrape(
        timeout=settings.METERING.telemetry_timeout_seconds, min_gap=seconds / 2
    )


@shared_task(name="metering.attribute_energy", ignore_result=True)
def attribute_energy() -> int:
    return energy_attribute_ready().intervals


@shared_task(name="metering.calibrate_energy", ignore_result=True)
def calibrate_energy() -> int:
    return energy_calibrate_ready()
