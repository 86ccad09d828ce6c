from celery import shared_task

from fleet.services import backends_probe


@shared_task(name="gateway.probe_backends", ignore_result=True)
def probe_backends() -> dict[str, bool]:
    return backends_probe()
