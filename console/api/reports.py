# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""The finance report (/billing/report/<YYYY-MM>.<html|csv|pdf>) for staff tokens as well as
signed-in staff.

A request with an `Authorization` header is the API's: a staff token whose user may view
invoices and which has the `billing` scope gets the report; any other gets the API's JSON
error (401 or 403), never the sign-in page. A request without one is billing's page for a
staff session, sent to sign in when there is none. config/urls.py routes the report here:
tokens belong to the console, a layer above billing.
"""

from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.views import APIView

from billing import views as billing_views
from billing.models import Invoice
from console.api.authentication import StaffTokenAuthentication
from console.api.exports import JsonErrorsOnly
from console.models import Scope


def finance_report(request: HttpRequest, period: str, fmt: str) -> HttpResponse:
    if "HTTP_AUTHORIZATION" in request.META:
        response: HttpResponse = _token_report(request, period=period, fmt=fmt)
        return response
    return billing_views.finance_report(request, period=period, fmt=fmt)


@extend_schema(exclude=True)  # a page outside /api/, with its own docs (docs/billing.md)
class FinanceReportView(APIView):
    authentication_classes = [StaffTokenAuthentication]
    content_negotiation_class = JsonErrorsOnly
    permission_model = Invoice
    token_read_scope = Scope.BILLING.value

    def get(self, request: Request, period: str, fmt: str) -> HttpResponse:
        currency = request.query_params.get("currency")
        try:
            return billing_views.finance_report_response(period=period, fmt=fmt, currency=currency)
        except billing_views.ReportRefused as refused:
            if refused.status == 400:
                raise exceptions.ValidationError({"currency": [refused.message]}) from None
            raise exceptions.NotFound(refused.message) from None


_token_report = FinanceReportView.as_view()
