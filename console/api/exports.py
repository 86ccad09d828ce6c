# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""Usage and invoice exports, CSV or Parquet, streamed as billing.exports produces them
(billing.views.export_response: pulled a piece at a time on the request's thread under ASGI).

The export's first piece is made before the response starts: an export that cannot start is
a 500 in the API's error shape, logged, never a 200 with an empty body.
"""

from datetime import timedelta
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from billing.exports import CONTENT_TYPES, FORMATS, ExportFailed, Kind, export_started
from billing.models import Invoice
from billing.views import export_response
from metering.models import UsageRecord

# The longest range one export may cover: a year and a day.
EXPORT_MAX_RANGE = timedelta(days=366)


class ExportQuerySerializer(serializers.Serializer[dict[str, Any]]):
    from_ = serializers.DateTimeField(help_text="Start of the range (inclusive).")
    to = serializers.DateTimeField(help_text="End of the range (exclusive), at most 366 days on.")
    account = serializers.IntegerField(
        required=False, min_value=1, max_value=2**63 - 1, help_text="One account's (default all)."
    )
    project = serializers.IntegerField(
        required=False, min_value=1, max_value=2**63 - 1, help_text="One project's (default all)."
    )
    file_format = serializers.ChoiceField(choices=list(FORMATS), default="csv")

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        """The query says `from`, which a Python attribute cannot be called."""
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")
        return dict(fields)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["from"] >= attrs["to"]:
            raise serializers.ValidationError("`from` must be before `to`.", code="empty_range")
        if attrs["to"] - attrs["from"] > EXPORT_MAX_RANGE:
            raise serializers.ValidationError(
                f"An export may span at most {EXPORT_MAX_RANGE.days} days.", code="range_too_long"
            )
        return attrs


class ExportError(exceptions.APIException):
    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    default_code = "export_failed"


class JsonErrorsOnly(BaseContentNegotiation):
    """Errors are JSON whatever the client accepts; the file itself is not rendered by DRF."""

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        return renderers[0], renderers[0].media_type

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None


class ExportView(APIView):
    """[from, to) of usage records (by start) or invoice lines (by period start), streamed."""

    kind: Kind = "usage"
    content_negotiation_class = JsonErrorsOnly

    @property
    def permission_model(self) -> type[UsageRecord | Invoice]:
        """Whose view permission an export needs: the rows it carries are these."""
        return UsageRecord if self.kind == "usage" else Invoice

    @extend_schema(
        parameters=[ExportQuerySerializer],
        responses={
            (200, CONTENT_TYPES["csv"]): OpenApiResponse(OpenApiTypes.BINARY),
            (200, CONTENT_TYPES["parquet"]): OpenApiResponse(OpenApiTypes.BINARY),
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        query = ExportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        fmt = params["file_format"]
        since, until = params["from"], params["to"]
        try:
            pieces = export_started(
                kind=self.kind,
                fmt=fmt,
                since=since,
                until=until,
                account_id=params.get("account"),
                project_id=params.get("project"),
            )
        except ExportFailed as failed:
            raise ExportError(f"{failed} The error is in the server's log.") from failed
        return export_response(
            request._request, pieces, kind=self.kind, fmt=fmt, since=since, until=until
        )
