"""What the account used and owes: the dashboard, the usage page and its CSV, invoices, and
the account's audit log."""

import csv
import json
from decimal import Decimal
from typing import Any

from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.utils import timezone

from audit.diff import changes
from billing.invoice_document import invoice_filename, invoice_html, invoice_pdf
from billing.services import invoice_preview
from customers.models import Member
from metering.models import UsageRecord
from portal.access import member_required
from portal.forms import UsageFilterForm
from portal.selectors import (
    UsageFilter,
    account_audit,
    account_invoices,
    dashboard_figures,
    usage_csv_rows,
    usage_keys,
    usage_projects,
    usage_records,
)

PAGE_SIZE = 50


@member_required("usage.read")
def dashboard(request: HttpRequest, member: Member) -> HttpResponse:
    board = dashboard_figures(member=member, now=timezone.now())
    chart = {
        "days": [row["day"].strftime("%Y-%m-%d") for row in board.days],
        "prompt": [row["prompt_tokens"] for row in board.days],
        "completion": [row["completion_tokens"] for row in board.days],
    }
    budget = board.budget.monthly_limit if board.budget is not None else None
    context = {
        "member": member,
        "title": "Dashboard",
        "board": board,
        "budget": budget,
        "budget_percent": _percent(board.spend, budget),
        "projects": [
            (project, spend, tokens, _percent(spend, project.monthly_budget))
            for project, spend, tokens in board.projects
        ],
        "chart": json.dumps(chart),
    }
    return TemplateResponse(request, "portal/dashboard.html", context)


def _percent(spent: Decimal, budget: Decimal | None) -> int | None:
    if budget is None or budget <= 0:
        return None
    return int(spent * 100 / budget)


def _usage_filter(
    request: HttpRequest, member: Member
) -> tuple[UsageFilterForm, UsageFilter | None]:
    """The form and the filter it asks for (None where it is not valid: nothing is shown)."""
    form = UsageFilterForm(
        request.GET or None, projects=usage_projects(member), keys=usage_keys(member)
    )
    if not form.is_bound:
        today = timezone.now().date()
        return form, UsageFilter(since=today.replace(day=1))
    if not form.is_valid():
        return form, None
    data = form.cleaned_data
    return form, UsageFilter(
        project=data["project"],
        key=data["key"],
        model=data["model"].strip(),
        since=data["since"],
        until=data["until"],
    )


@member_required("usage.read")
def usage(request: HttpRequest, member: Member) -> HttpResponse:
    form, only = _usage_filter(request, member)
    records = UsageRecord.objects.none()
    if only is not None:
        records = usage_records(member=member, only=only)
    pages = Paginator(records, PAGE_SIZE)
    page = pages.get_page(request.GET.get("page"))
    names = dict(usage_projects(member).values_list("pk", "name"))
    keys = {key.pk: key for key in usage_keys(member)}
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "member": member,
        "title": "Usage",
        "form": form,
        "page": page,
        "rows": [(r, names.get(r.project_id or 0), keys.get(r.api_key_id)) for r in page],
        "query": query.urlencode(),
        "only": only,
    }
    return TemplateResponse(request, "portal/usage.html", context)


class _Echo:
    """csv.writer's file: hands each written line back instead of keeping it."""

    def write(self, value: str) -> str:
        return value


@member_required("usage.read")
def usage_csv(request: HttpRequest, member: Member) -> HttpResponse | StreamingHttpResponse:
    """The usage page's filter as CSV, streamed row by row."""
    form, only = _usage_filter(request, member)
    if only is None:
        return HttpResponse(form.errors.as_text(), status=400, content_type="text/plain")
    writer = csv.writer(_Echo())
    rows = (writer.writerow(row) for row in usage_csv_rows(member=member, only=only))
    response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="usage-{stamp}.csv"'
    return response


@member_required("invoices.read")
def invoices(request: HttpRequest, member: Member) -> HttpResponse:
    estimate = invoice_preview(account=member.account)
    context = {
        "member": member,
        "title": "Invoices",
        "estimate": estimate,
        "invoices": account_invoices(member),
    }
    return TemplateResponse(request, "portal/invoices.html", context)


def _billable(member: Member, invoice_id: str) -> Any:
    """`current`: this month's estimate; else one of the account's final invoices."""
    if invoice_id == "current":
        return invoice_preview(account=member.account)
    if not invoice_id.isdigit():
        raise Http404("no such invoice")
    return get_object_or_404(account_invoices(member), pk=int(invoice_id))


@member_required("invoices.read")
def invoice_document_html(request: HttpRequest, member: Member, invoice_id: str) -> HttpResponse:
    return HttpResponse(invoice_html(_billable(member, invoice_id)))


@member_required("invoices.read")
def invoice_document_pdf(request: HttpRequest, member: Member, invoice_id: str) -> HttpResponse:
    billable = _billable(member, invoice_id)
    response = HttpResponse(invoice_pdf(billable), content_type="application/pdf")
    filename = invoice_filename(billable, "pdf")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@member_required("audit.read")
def audit(request: HttpRequest, member: Member) -> HttpResponse:
    pages = Paginator(account_audit(member), PAGE_SIZE)
    page = pages.get_page(request.GET.get("page"))
    context = {
        "member": member,
        "title": "Audit log",
        "page": page,
        "rows": [(entry, changes(entry.before, entry.after)) for entry in page],
    }
    return TemplateResponse(request, "portal/audit.html", context)
