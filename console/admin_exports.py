"""The console's exports page (/admin/exports/): usage records or invoice lines of a range of
days, one account's or all, downloaded as CSV or Parquet, the same file as the API and
`manage.py export` make (billing/exports.py).

The form is a GET, so a download is a link that can be kept; the day range is inclusive, as
people say it ("1 to 30 November"), and becomes [first day 00:00, day after the last 00:00)
UTC. An export needs the view permission of the rows it carries, as in the API. Exports only
read, so nothing here is audited.
"""

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from billing.exports import FORMATS, KINDS, ExportFailed, export_started
from billing.views import export_response
from console.api.exports import EXPORT_MAX_RANGE
from customers.models import Account, Project

# The permission each kind of export needs: the rows it carries.
PERMISSIONS = {"usage": "metering.view_usagerecord", "invoices": "billing.view_invoice"}
KIND_NAMES = {
    "usage": "Usage records (by the time the request started)",
    "invoices": "Invoice lines (by the start of the invoice's period)",
}
FORMAT_NAMES = {"csv": "CSV", "parquet": "Parquet"}


class ExportForm(forms.Form):
    kind = forms.ChoiceField(label="What", choices=[(k, KIND_NAMES[k]) for k in KINDS])
    first_day = forms.DateField(label="First day", widget=forms.DateInput(attrs={"type": "date"}))
    last_day = forms.DateField(
        label="Last day",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Included. Days are UTC.",
    )
    account = forms.ModelChoiceField(
        Account.objects.order_by("name"), required=False, empty_label="All accounts"
    )
    project = forms.ModelChoiceField(
        Project.objects.select_related("account").order_by("account__name", "name"),
        required=False,
        empty_label="All projects",
        help_text="Invoices: only the lines of the project.",
    )
    file_format = forms.ChoiceField(choices=[(f, FORMAT_NAMES[f]) for f in FORMATS])

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        first, last = cleaned.get("first_day"), cleaned.get("last_day")
        if first and last:
            if last < first:
                self.add_error("last_day", "The last day is before the first day.")
            elif (last - first) + timedelta(days=1) > EXPORT_MAX_RANGE:
                self.add_error(
                    "last_day", f"An export may span at most {EXPORT_MAX_RANGE.days} days."
                )
        account, project = cleaned.get("account"), cleaned.get("project")
        if account and project and project.account_id != account.pk:
            self.add_error("project", f"{project} is not a project of {account}.")
        return cleaned


def exports_page(request: HttpRequest) -> HttpResponseBase:
    """GET /admin/exports/[?kind=usage]: the form; with `file_format`, the download."""
    if "file_format" not in request.GET:
        form = ExportForm(initial=_initial(request.GET.get("kind", "usage")))
        return _page(request, form)
    form = ExportForm(request.GET)
    if not form.is_valid():
        return _page(request, form, status=400)
    export = form.cleaned_data
    kind, fmt = export["kind"], export["file_format"]
    if not request.user.has_perm(PERMISSIONS[kind]):
        form.add_error(None, f"Exporting {kind} needs the permission {PERMISSIONS[kind]}.")
        return _page(request, form, status=403)
    since = _midnight(export["first_day"])
    until = _midnight(export["last_day"] + timedelta(days=1))
    account = export["account"]
    try:
        pieces = export_started(
            kind=kind,
            fmt=fmt,
            since=since,
            until=until,
            account_id=account.pk if account else None,
            project_id=export["project"].pk if export["project"] else None,
        )
    except ExportFailed as failed:
        form.add_error(None, f"{failed} The error is in the server's log.")
        return _page(request, form, status=500)
    return export_response(request, pieces, kind=kind, fmt=fmt, since=since, until=until)


def _page(request: HttpRequest, form: ExportForm, *, status: int = 200) -> TemplateResponse:
    context = {
        **admin.site.each_context(request),
        "title": "Exports",
        "form": form,
        "presets": _presets(timezone.now().date()),
    }
    return TemplateResponse(request, "console/exports.html", context, status=status)


def _initial(kind: str) -> dict[str, Any]:
    """Last month: what finance loads most often."""
    first, last = _last_month(timezone.now().date())
    return {"kind": kind if kind in KINDS else "usage", "first_day": first, "last_day": last}


def _presets(today: date) -> list[dict[str, Any]]:
    """Last month's and this month's exports, one link each to download."""
    ranges = [
        ("Last month", *_last_month(today)),
        ("This month so far", today.replace(day=1), today),
    ]
    page = reverse("console-exports")
    return [
        {
            "label": label,
            "first": first,
            "last": last,
            "links": [
                (
                    f"{kind.capitalize()}, {FORMAT_NAMES[fmt]}",
                    f"{page}?{urlencode(_query(kind, fmt, first, last))}",
                )
                for kind in KINDS
                for fmt in FORMATS
            ],
        }
        for label, first, last in ranges
    ]


def _query(kind: str, fmt: str, first: date, last: date) -> dict[str, str]:
    return {"kind": kind, "first_day": f"{first}", "last_day": f"{last}", "file_format": fmt}


def _last_month(today: date) -> tuple[date, date]:
    last = today.replace(day=1) - timedelta(days=1)
    return last.replace(day=1), last


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


exports_view = admin.site.admin_view(exports_page)
