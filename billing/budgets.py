"""Budgets' soft alerts: each budgeted account's month-to-date spend against its thresholds.

Spend is the account's usage rated at list prices in billing's currency, before included
tokens and plan fees: the amount the gateway's hard cap counts (docs/billing.md, "Spend caps"),
read here from the rollups and the ledger after them, so it covers every gateway and survives
Redis. An alert is recorded once per account, month and threshold (BudgetAlert's unique
constraint) together with a structured log line and a `budget.threshold_crossed` webhook
event to the customer's endpoints. The hard cap itself is the gateway's (gateway/limits.py).

Projects with a `monthly_budget` get alerts the same way, at PROJECT_PERCENTS of it, recorded
once per project, month and threshold (ProjectBudgetAlert) with a log line of their own; the
spend is the project's usage by the same rule.

A budget must be in billing's currency (customers.models.Budget.clean); one written before
that rule, in another currency, cannot be compared with the spend without an exchange rate:
it raises no alerts, and each run logs it so that staff set it again in billing's currency.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from billing.models import JobRun
from billing.rating import FEE_EXEMPT
from billing.selectors import billing_currency
from customers.models import Budget
from customers.webhooks import webhook_emit

log = logging.getLogger(__name__)

_ALERTS = (Path(__file__).parent / "sql" / "budget_alerts.sql").read_text()
_PROJECT_ALERTS = (Path(__file__).parent / "sql" / "budget_alerts_projects.sql").read_text()
# The thresholds of a project's budget, in per cent of it.
PROJECT_PERCENTS = (50, 80, 100)
# One run at a time; a run that finds another under way leaves the work to it.
_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('billing.budget_alerts'))"
_PROJECT_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('billing.project_budget_alerts'))"


@dataclass(frozen=True, slots=True)
class Alert:
    account_id: int
    period_start: datetime
    percent: int
    spent: Decimal
    monthly_limit: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class ProjectAlert:
    project_id: int
    account_id: int
    period_start: datetime
    percent: int
    spent: Decimal
    monthly_budget: Decimal


def budget_alerts_record(*, now: datetime | None = None) -> list[Alert]:
    """Record the thresholds crossed since the last run; returns the alerts recorded now.

    The month just ended is looked at again during the grace window, for its late usage.
    """
    now = now or datetime.now(UTC)
    periods = _periods(now)
    _foreign_budgets_note()
    alerts: list[Alert] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_LOCK)
        if not cursor.fetchone()[0]:
            return []
        for start, end in periods:
            cursor.execute(_ALERTS, _params(start, end, _rolled_until()))
            alerts += [Alert(row[0], start, *row[1:]) for row in cursor.fetchall()]
        for alert in alerts:
            _threshold_emit(
                alert.account_id,
                alert.period_start,
                alert.percent,
                alert.spent,
                limit=alert.monthly_limit,
                currency=alert.currency,
            )
    for alert in alerts:
        log.warning(
            "budget threshold reached",
            extra={
                "account_id": alert.account_id,
                "period": f"{alert.period_start:%Y-%m}",
                "percent": alert.percent,
                "spent": str(alert.spent),
                "monthly_limit": str(alert.monthly_limit),
                "currency": alert.currency,
            },
        )
    return alerts


def project_budget_alerts_record(*, now: datetime | None = None) -> list[ProjectAlert]:
    """Record the thresholds of projects' budgets crossed since the last run (as
    budget_alerts_record does for accounts); returns the alerts recorded now."""
    now = now or datetime.now(UTC)
    alerts: list[ProjectAlert] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_PROJECT_LOCK)
        if not cursor.fetchone()[0]:
            return []
        for start, end in _periods(now):
            params = {**_params(start, end, _rolled_until()), "percents": list(PROJECT_PERCENTS)}
            cursor.execute(_PROJECT_ALERTS, params)
            alerts += [ProjectAlert(r[0], r[1], start, *r[2:]) for r in cursor.fetchall()]
        for p in alerts:
            _threshold_emit(
                p.account_id,
                p.period_start,
                p.percent,
                p.spent,
                limit=p.monthly_budget,
                currency=billing_currency(),
                project_id=p.project_id,
            )
    for alert in alerts:
        log.warning(
            "project budget threshold reached",
            extra={
                "project_id": alert.project_id,
                "account_id": alert.account_id,
                "period": f"{alert.period_start:%Y-%m}",
                "percent": alert.percent,
                "spent": str(alert.spent),
                "monthly_budget": str(alert.monthly_budget),
                "currency": billing_currency(),
            },
        )
    return alerts


def _threshold_emit(
    account_id: int,
    period_start: datetime,
    percent: int,
    spent: Decimal,
    *,
    limit: Decimal,
    currency: str,
    project_id: int | None = None,
) -> None:
    """Tell the account's endpoints (budget.threshold_crossed), in the alert's transaction."""
    webhook_emit(
        account_id=account_id,
        event="budget.threshold_crossed",
        data={
            "project_id": project_id,
            "period": f"{period_start:%Y-%m}",
            "percent": percent,
            "spent": str(spent),
            "limit": str(limit),
            "currency": currency,
        },
    )


def _periods(now: datetime) -> list[tuple[datetime, datetime]]:
    """The month of `now`, and the month before it while its grace window lasts."""
    grace = timedelta(seconds=settings.BILLING.grace_seconds)
    month = _month_start(now)
    periods = [(month, _month_start(month + timedelta(days=32)))]
    if now - month < grace:
        periods.insert(0, (_month_start(month - timedelta(days=1)), month))
    return periods


def _foreign_budgets_note() -> None:
    currency = billing_currency()
    foreign = list(
        Budget.objects.exclude(currency=currency)
        .exclude(alert_percents=[])
        .values_list("account_id", flat=True)
    )
    if foreign:
        log.warning(
            "budgets in another currency than billing's raise no alerts",
            extra={"account_ids": foreign, "currency": currency},
        )


def _rolled_until() -> datetime | None:
    """Where the hourly rollups end (billing.services.rollups_run's watermark)."""
    run = JobRun.objects.filter(job="rollups", scope="").first()
    return run.watermark if run else None


def _params(start: datetime, end: datetime, rolled: datetime | None) -> dict[str, Any]:
    """The month [start, end): rollups up to `rolled` (whole days, then hours), then ledger."""
    rolled = min(max(rolled or start, start), end)
    day_rolled = max(rolled.replace(hour=0), start)
    return {
        "period_start": start,
        "period_end": end,
        "rolled": rolled,
        "day_rolled": day_rolled,
        "billing_currency": billing_currency(),
        "fee_exempt": FEE_EXEMPT,
    }


def _month_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
