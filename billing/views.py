"""Staff pages of billing: the finance report in its three forms, and the HTTP response that
carries an export (billing/exports.py) to the API and the console.

Staff only, as the console admits them: `staff_only` is the admin site's own check (staff,
and past the two-factor step where the user has set it up), with its sign-in page for others.
A staff token reaches the same report through console/api/reports.py, which config/urls.py
routes in front of this view (tokens belong to the console, above billing).
"""

import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import cast

from asgiref.sync import sync_to_async
from django.contrib import admin
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from billing.exports import CONTENT_TYPES as EXPORT_CONTENT_TYPES
from billing.exports import Format, Kind
from billing.report_forms import report_render
from billing.reports import CONTENT_TYPES, REPORT_FORMATS, ReportError, ReportFormat, period_parse


def staff_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    return admin.site.admin_view(view)


class ReportRefused(Exception):
    """A request for a report that cannot be made: `status` 404 (no such period or form, or
    nothing in that currency) or 400 (a malformed currency)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@staff_only
def finance_report(request: HttpRequest, period: str, fmt: str) -> HttpResponse:
    """GET /billing/report/<YYYY-MM>.<html|csv|pdf>[?currency=USD]"""
    try:
        return finance_report_response(period=period, fmt=fmt, currency=request.GET.get("currency"))
    except ReportRefused as refused:
        # Said in words (a currency the month has nothing in: never a report of zeros).
        return HttpResponse(
            refused.message, status=refused.status, content_type="text/plain; charset=utf-8"
        )


def finance_report_response(*, period: str, fmt: str, currency: str | None) -> HttpResponse:
    """The report of `period` (YYYY-MM) as `fmt`, in `currency` (default USD); ReportRefused
    says why there is none."""
    if fmt not in REPORT_FORMATS:
        raise ReportRefused(404, "the report is html, csv or pdf")
    try:
        period_start = period_parse(period)
    except ValueError as error:
        raise ReportRefused(404, str(error)) from None
    form = cast(ReportFormat, fmt)
    code = (currency or "USD").upper()
    if not re.fullmatch("[A-Z]{3}", code):
        raise ReportRefused(400, "currency is a three-letter code (ISO 4217), e.g. USD")
    try:
        body = report_render(period_start=period_start, currency=code, fmt=form)
    except ReportError as error:
        raise ReportRefused(404, str(error)) from None
    response = HttpResponse(body, content_type=CONTENT_TYPES[form])
    if fmt != "html":
        response["Content-Disposition"] = f'attachment; filename="finance-{period}.{fmt}"'
    return response


def export_response(
    request: HttpRequest,
    pieces: Iterator[bytes],
    *,
    kind: Kind,
    fmt: Format,
    since: datetime,
    until: datetime,
) -> StreamingHttpResponse:
    """A download of an export's pieces (billing.exports.export_started, so the first is made).

    Under ASGI the pieces are pulled one at a time on the request's thread (Django's
    connection is per thread), so a year of usage never sits in memory; Django would otherwise
    read a synchronous iterator whole before sending it."""
    streamed = _pulled(pieces) if isinstance(request, ASGIRequest) else pieces
    response = StreamingHttpResponse(streamed, content_type=EXPORT_CONTENT_TYPES[fmt])
    name = f"{kind}-{since:%Y%m%dT%H%M%S}-{until:%Y%m%dT%H%M%S}.{fmt}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


async def _pulled(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    pull = sync_to_async(_next_piece, thread_sensitive=True)
    while (piece := await pull(pieces)) is not None:
        yield piece


def _next_piece(pieces: Iterator[bytes]) -> bytes | None:
    return next(pieces, None)
