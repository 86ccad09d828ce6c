"""Customers' Celery tasks: thin wrappers over services, each safe to run twice at once."""

from dataclasses import asdict

from celery import shared_task

from customers.webhook_delivery import deliveries_send_due


@shared_task(name="customers.webhook_deliveries_send", ignore_result=True)
def webhook_deliveries_send() -> dict[str, int]:
    """Send the webhook deliveries due now (beat, and a kick when an event commits); rows
    another worker is sending are skipped, not sent twice."""
    return asdict(deliveries_send_due())
