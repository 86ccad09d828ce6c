# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""Usage by day, model, tier, account and project, summed in PostgreSQL: for staff, key
holders and members."""

from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from console.api.common import Pagination
from console.filters import StaffUsageFilter, UsageFilter
from console.selectors import USAGE_GROUPS, usage_aggregate
from metering.models import UsageRecord


class UsageRowSerializer(serializers.Serializer[dict[str, Any]]):
    """One group's sums; a grouping column not asked for is null."""

    day = serializers.SerializerMethodField()
    model = serializers.CharField(allow_null=True, required=False)
    tier = serializers.CharField(allow_null=True, required=False)
    account = serializers.IntegerField(source="account_id", allow_null=True, required=False)
    project = serializers.IntegerField(source="project_id", allow_null=True, required=False)
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField(source="sum_prompt_tokens")
    cached_prompt_tokens = serializers.IntegerField(source="sum_cached_prompt_tokens")
    completion_tokens = serializers.IntegerField(source="sum_completion_tokens")
    reasoning_tokens = serializers.IntegerField(source="sum_reasoning_tokens")
    energy_joules = serializers.FloatField(
        source="sum_energy_joules",
        help_text="Attributed energy; requests not yet attributed add 0.",
    )

    @extend_schema_field(OpenApiTypes.DATE)
    def get_day(self, row: dict[str, Any]) -> str | None:
        day = row.get("day")
        return day.date().isoformat() if day is not None else None

    def to_representation(self, instance: dict[str, Any]) -> dict[str, Any]:
        row = {"model": None, "tier": None, "account_id": None, "project_id": None, **instance}
        data: dict[str, Any] = super().to_representation(row)
        return data


class UsagePage(serializers.Serializer[Any]):
    """A page of usage rows, with the range and grouping they are for (defaults filled in)."""

    from_ = serializers.DateTimeField(help_text="Start of the range (inclusive).")
    to = serializers.DateTimeField(help_text="End of the range (exclusive).")
    group_by = serializers.ListField(child=serializers.CharField())
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = UsageRowSerializer(many=True)

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        """The response says `from`, which a Python attribute cannot be called."""
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")
        return dict(fields)


def usage_parameters(
    groups: Sequence[str], *, staff: bool, extra: Sequence[OpenApiParameter] = ()
) -> list[OpenApiParameter]:
    """The query parameters of a usage endpoint, for the schema (the view reads a FilterSet)."""
    scope = (
        [
            OpenApiParameter("account", OpenApiTypes.INT64, description="One account's usage."),
            OpenApiParameter("tier", OpenApiTypes.STR),
        ]
        if staff
        else []
    )
    return [
        OpenApiParameter(
            "from", OpenApiTypes.DATETIME, description="Start (inclusive); default `to` - 30 days."
        ),
        OpenApiParameter(
            "to", OpenApiTypes.DATETIME, description="End (exclusive), at most 366 days after."
        ),
        *scope,
        OpenApiParameter("model", OpenApiTypes.STR),
        OpenApiParameter("project", OpenApiTypes.INT64, description="One project's usage."),
        *extra,
        OpenApiParameter(
            "group_by",
            {"type": "array", "items": {"type": "string", "enum": list(groups)}},
            explode=False,
            description="Comma-separated; default `day,model`.",
        ),
        OpenApiParameter("limit", OpenApiTypes.INT, description="Rows per page (at most 500)."),
        OpenApiParameter("offset", OpenApiTypes.INT),
    ]


class UsageViewBase(generics.GenericAPIView[UsageRecord]):
    """Shared by the staff and self-serve usage endpoints; `records()` scopes the ledger."""

    filterset_class: type[UsageFilter] = UsageFilter
    pagination_class = Pagination
    serializer_class = UsageRowSerializer
    default_group_by: Sequence[str] = ("day", "model")

    def records(self) -> QuerySet[UsageRecord]:
        raise NotImplementedError

    def get(self, request: Request) -> Response:
        filterset = self.filterset_class(request.query_params, queryset=self.records())
        if not filterset.is_valid():
            raise serializers.ValidationError(filterset.errors)
        cleaned = filterset.form.cleaned_data
        group_by = [name for name in cleaned.get("group_by") or self.default_group_by]
        rows = usage_aggregate(records=filterset.qs, group_by=group_by)
        paginator = self.paginator
        assert paginator is not None
        page = paginator.paginate_queryset(rows, request, view=self)
        return Response(
            {
                "from": cleaned["from"],
                "to": cleaned["to"],
                "group_by": group_by,
                "count": paginator.count,
                "next": paginator.get_next_link(),
                "previous": paginator.get_previous_link(),
                "results": UsageRowSerializer(page, many=True).data,
            }
        )


class StaffUsageView(UsageViewBase):
    """Every account's usage in [from, to): filter by account, tier, model; group by any."""

    filterset_class = StaffUsageFilter
    permission_model = UsageRecord

    def records(self) -> QuerySet[UsageRecord]:
        return UsageRecord.objects.all()

    @extend_schema(
        responses=UsagePage, parameters=usage_parameters(USAGE_GROUPS, staff=True), filters=False
    )
    def get(self, request: Request) -> Response:
        return super().get(request)
