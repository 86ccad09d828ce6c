"""The portal's reads: usage (the page, its CSV), the dashboard's figures, invoices and the
audit log, each within one member's account (and a developer's projects).

The dashboard's sums are SQL (portal/sql/), over the ledger's (account_id, started_at)
index; the usage page pages through the ORM on the same index.
"""

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import QuerySet

from audit.models import AuditEntry
from billing.models import Invoice
from billing.rating import FEE_EXEMPT
from customers.models import ApiKey, Budget, Member, Project
from metering.models import UsageRecord

_SQL = Path(__file__).parent / "sql"
_DAYS = (_SQL / "dashboard_days.sql").read_text()
_SPEND = (_SQL / "dashboard_spend.sql").read_text()


def member_project_ids(member: Member) -> list[int] | None:
    """The projects whose usage a member reads: None for every one (all roles but
    developers), else a developer's own (archived ones too: their usage stays theirs)."""
    if member.role != Member.Role.DEVELOPER:
        return None
    return list(member.projects.values_list("pk", flat=True))


def usage_projects(member: Member) -> QuerySet[Project]:
    projects = Project.objects.filter(account_id=member.account_id)
    ids = member_project_ids(member)
    return projects if ids is None else projects.filter(pk__in=ids)


def usage_keys(member: Member) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.filter(account_id=member.account_id).order_by("name", "pk")
    ids = member_project_ids(member)
    return keys if ids is None else keys.filter(project_id__in=ids)


@dataclass(frozen=True)
class UsageFilter:
    project: Project | None = None
    key: ApiKey | None = None
    model: str = ""
    since: date | None = None
    until: date | None = None  # included


def usage_records(*, member: Member, only: UsageFilter) -> QuerySet[UsageRecord]:
    """The member's account's usage records matching the filter, newest first."""
    records = UsageRecord.objects.filter(account_id=member.account_id)
    ids = member_project_ids(member)
    if ids is not None:
        records = records.filter(project_id__in=ids)
    if only.project is not None:
        records = records.filter(project_id=only.project.pk)
    if only.key is not None:
        records = records.filter(api_key_id=only.key.pk)
    if only.model:
        records = records.filter(model=only.model)
    if only.since is not None:
        records = records.filter(started_at__gte=_midnight(only.since))
    if only.until is not None:
        records = records.filter(started_at__lt=_midnight(only.until + timedelta(days=1)))
    return records.order_by("-started_at", "-request_id")


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


CSV_COLUMNS = (
    "request_id",
    "started_at",
    "project",
    "key",
    "model",
    "tier",
    "endpoint",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "tokens_estimated",
    "status_code",
    "outcome",
    "latency_ms",
)


def usage_csv_rows(*, member: Member, only: UsageFilter) -> Iterator[Sequence[Any]]:
    """The header, then one row per record, read in chunks (a month can be millions)."""
    projects = dict(Project.objects.filter(account_id=member.account_id).values_list("pk", "name"))
    keys = {
        pk: f"tf_{key_id}_… {name}".strip()
        for pk, key_id, name in ApiKey.objects.filter(account_id=member.account_id).values_list(
            "pk", "key_id", "name"
        )
    }
    yield CSV_COLUMNS
    rows = usage_records(member=member, only=only).values_list(
        "request_id",
        "started_at",
        "project_id",
        "api_key_id",
        *CSV_COLUMNS[4:],
    )
    for row in rows.iterator(chunk_size=2000):
        request_id, started_at, project_id, key_id, *rest = row
        yield (
            f"req_{request_id.hex}",
            started_at.isoformat(),
            projects.get(project_id, ""),
            keys.get(key_id, ""),
            *rest,
        )


@dataclass
class Dashboard:
    currency: str
    period_start: datetime
    spend: Decimal = Decimal(0)
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    budget: Budget | None = None
    # (project, spend, tokens) of every live project the member reads, most spent first.
    projects: list[tuple[Project, Decimal, int]] = field(default_factory=list)
    # (model, tokens), most first.
    top_models: list[tuple[str, int]] = field(default_factory=list)
    days: list[dict[str, Any]] = field(default_factory=list)


def dashboard_figures(*, member: Member, now: datetime) -> Dashboard:
    """This month so far (UTC): spend at list prices against the budgets, requests, errors,
    tokens by day, and the models and projects that used most."""
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    params = {
        "account_id": member.account_id,
        "since": start,
        "until": now + timedelta(seconds=1),
        "project_ids": member_project_ids(member),
    }
    currency = settings.BILLING.currency
    board = Dashboard(currency=currency, period_start=start)
    board.budget = Budget.objects.filter(account_id=member.account_id).first()
    by_project: dict[int | None, list[Any]] = defaultdict(lambda: [Decimal(0), 0])
    by_model: dict[str, int] = defaultdict(int)
    for row in _rows(_SPEND, {**params, "currency": currency, "fee_exempt": FEE_EXEMPT}):
        board.requests += row["requests"]
        board.errors += row["errors"]
        board.tokens += row["tokens"]
        board.spend += row["amount"]
        by_project[row["project_id"]][0] += row["amount"]
        by_project[row["project_id"]][1] += row["tokens"]
        by_model[row["model"]] += row["tokens"]
    board.projects = sorted(
        (
            (project, *by_project.get(project.pk, (Decimal(0), 0)))
            for project in usage_projects(member).filter(archived_at=None)
        ),
        key=lambda row: (-row[1], -row[2], row[0].name),
    )
    board.top_models = sorted(by_model.items(), key=lambda item: (-item[1], item[0]))[:5]
    board.days = _rows(_DAYS, params)
    return board


def _rows(sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def account_invoices(member: Member) -> QuerySet[Invoice]:
    """The account's invoices and credit notes once final (drafts change until they close)."""
    return Invoice.objects.filter(
        account_id=member.account_id, status=Invoice.Status.FINALISED
    ).order_by("-period_start", "-pk")


def account_audit(member: Member) -> QuerySet[AuditEntry]:
    """The entries filed under the member's account, newest first."""
    return AuditEntry.objects.filter(account_id=member.account_id).order_by("-at", "-pk")
