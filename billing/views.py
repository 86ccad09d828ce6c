"""Staff pages of billing: the finance report in its three forms.

Staff only, as the console admits them: `staff_only` is the admin site's own check (staff,
and past the two-factor step where the user has set it up), with its sign-in page for others.
"""

import re
from collections.abc import Callable
from typing import cast

from django.contrib import admin
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotFound,
)

from billing.report_forms import report_render
from billing.reports import CONTENT_TYPES, REPORT_FORMATS, ReportError, ReportFormat, period_parse


def staff_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    return admin.site.admin_view(view)


@staff_only
def finance_report(request: HttpRequest, period: str, fmt: str) -> HttpResponse:
    """GET /billing/report/<YYYY-MM>.<html|csv|pdf>[?currency=USD]"""
    if fmt not in REPORT_FORMATS:
        raise Http404("the report is html, csv or pdf")
    try:
        period_start = period_parse(period)
    except ValueError as error:
        raise Http404(str(error)) from None
    form = cast(ReportFormat, fmt)
    currency = request.GET.get("currency", "USD").upper()
    if not re.fullmatch("[A-Z]{3}", currency):
        return HttpResponseBadRequest("currency is a three-letter code (ISO 4217), e.g. USD")
    try:
        body = report_render(period_start=period_start, currency=currency, fmt=form)
    except ReportError as error:
        # A currency the month has nothing in: said so, never a report of zeros.
        return HttpResponseNotFound(str(error), content_type="text/plain; charset=utf-8")
    response = HttpResponse(body, content_type=CONTENT_TYPES[form])
    if fmt != "html":
        response["Content-Disposition"] = f'attachment; filename="finance-{period}.{fmt}"'
    return response
