"""Billing's Celery tasks: thin wrappers over services, each idempotent and safe to run twice."""

from dataclasses import asdict
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from billing.budgets import budget_alerts_record, project_budget_alerts_record
from billing.checkout import auto_topups_run
from billing.credits import credits_balance_watch, credits_sync
from billing.drawdown import credits_drawdown_run
from billing.margins import margins_run
from billing.rollups import rollups_run
from billing.services import InvoiceError, invoices_close_due
from billing.stripe_sync import (
    stripe_configured,
    stripe_invoices_push_pending,
    stripe_invoices_reconcile,
)


@shared_task(name="billing.rollup_usage", ignore_result=True)
def rollup_usage() -> str | None:
    """Roll up the hours since the last run (a run under way elsewhere makes this a no-op)."""
    window = rollups_run()
    return f"{window.since:%Y-%m-%d %H:%M}/{window.until:%Y-%m-%d %H:%M}" if window else None


@shared_task(name="billing.compute_margins", ignore_result=True)
def compute_margins() -> str | None:
    window = margins_run()
    return f"{window.since:%Y-%m}/{window.until:%Y-%m}" if window else None


@shared_task(name="billing.close_invoices", ignore_result=True)
def close_invoices() -> int:
    """Close every month whose grace window has passed, in order (each once); a month that
    cannot be closed fails the task, after the months before it are closed."""
    due = invoices_close_due()
    if due.failed is not None:
        raise InvoiceError(f"{due.failed.start:%Y-%m} could not be closed: {due.error}")
    return sum(closed.finalised for closed in due.closed)


@shared_task(name="billing.budget_alerts", ignore_result=True)
def budget_alerts() -> int:
    """Accounts' and projects' budget thresholds crossed since the last run."""
    return len(budget_alerts_record()) + len(project_budget_alerts_record())


@shared_task(name="billing.stripe_push_invoices", ignore_result=True)
def stripe_push_invoices() -> dict[str, int]:
    if not stripe_configured():
        return {}
    return stripe_invoices_push_pending()


@shared_task(name="billing.stripe_reconcile")
def stripe_reconcile(days: int = 35) -> list[dict[str, str]]:
    """The differences between our invoices of the last `days` and Stripe's (also logged)."""
    if not stripe_configured():
        return []
    since = timezone.now() - timedelta(days=days)
    return [asdict(item) for item in stripe_invoices_reconcile(since=since)]


@shared_task(name="billing.credits_auto_topup", ignore_result=True)
def credits_auto_topup() -> dict[str, int]:
    """Charge the saved card of each prepaid account under its top-up threshold (once each)."""
    if not stripe_configured():
        return {}
    return auto_topups_run()


@shared_task(name="billing.credits_sync", ignore_result=True)
def credits_sync_sweep() -> int:
    """Credit movements not yet in the gateway's counters (a Redis that did not answer when
    they committed), and the counters rebuilt if Redis lost them."""
    return credits_sync()


@shared_task(name="billing.credits_drawdown", ignore_result=True)
def credits_drawdown() -> int:
    """Prepaid usage of the rolled-up hours drawn from the grants; expired grants recorded."""
    result = credits_drawdown_run()
    return result.entries + result.expired if result else 0


@shared_task(name="billing.credits_balance_watch", ignore_result=True)
def credits_balance_watch_task() -> int:
    """credits.balance_low / credits.exhausted webhooks, once per crossing."""
    return credits_balance_watch()
