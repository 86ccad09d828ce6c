# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""Query filters of the management and self-serve APIs (django-filter)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import django_filters as filters
from django import forms
from django.db.models import Q, QuerySet
from django.utils import timezone
from django_filters.fields import IsoDateTimeField

from audit.models import AuditEntry
from billing.models import Invoice
from catalogue.models import PlanPrice, Price, PriceBook
from customers.models import Account, ApiKey, Project, Tier
from fleet.models import Backend
from metering.models import UsageRecord

# Ids are bigints: larger values are refused as bad input instead of failing in PostgreSQL.
_ID_RANGE = {"min_value": 1, "max_value": 2**63 - 1}
# A usage query reads at most this long a range (a year and a day), by default the last 30 days.
USAGE_MAX_RANGE = timedelta(days=366)
USAGE_DEFAULT_RANGE = timedelta(days=30)


class UtcDateTimeField(IsoDateTimeField):
    """An ISO 8601 instant, in UTC: PostgreSQL refuses offsets beyond ±15:59 that Python
    accepts, and an instant at the edge of year 1 or 9999 may not exist in UTC at all."""

    def to_python(self, value: Any) -> datetime | None:
        instant: datetime | None = super().to_python(value)
        if instant is None:
            return None
        try:
            return instant.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("This instant is out of range.", code="overflow") from None


class UtcDateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField


class IdFilter(filters.NumberFilter):
    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**_ID_RANGE, **kwargs})


class GroupByFilter(filters.BaseCSVFilter, filters.ChoiceFilter):
    """`group_by=day,model`: read by the view, filters nothing."""

    def filter(self, qs: QuerySet[Any], value: Any) -> QuerySet[Any]:
        return qs


class AccountFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains")
    tier = filters.CharFilter(field_name="tier__slug")

    class Meta:
        model = Account
        fields = ["name", "status", "tier"]


class ApiKeyFilter(filters.FilterSet):
    account = IdFilter(field_name="account_id")
    project = IdFilter(field_name="project_id")
    active = filters.BooleanFilter(method="filter_active", label="Usable now")

    class Meta:
        model = ApiKey
        fields = ["account", "project", "name", "active"]

    def filter_active(self, qs: QuerySet[ApiKey], name: str, value: bool) -> QuerySet[ApiKey]:
        usable = Q(revoked_at__isnull=True) & (
            Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        )
        return qs.filter(usable) if value else qs.exclude(usable)


class ProjectFilter(filters.FilterSet):
    account = IdFilter(field_name="account_id")
    archived = filters.BooleanFilter(field_name="archived_at", lookup_expr="isnull", exclude=True)

    class Meta:
        model = Project
        fields = ["account", "is_default", "archived"]


class TierFilter(filters.FilterSet):
    class Meta:
        model = Tier
        fields = ["slug", "when_redis_down"]


class BackendFilter(filters.FilterSet):
    model = filters.CharFilter(method="by_model", label="Serves this public model")

    class Meta:
        model = Backend
        fields = ["enabled", "health", "model"]

    def by_model(self, qs: QuerySet[Backend], name: str, value: str) -> QuerySet[Backend]:
        return qs.filter(public_models__contains=[value])


class PriceBookFilter(filters.FilterSet):
    class Meta:
        model = PriceBook
        fields = ["currency"]


class PriceFilter(filters.FilterSet):
    price_book = IdFilter(field_name="price_book_id")

    class Meta:
        model = Price
        fields = ["price_book", "tier", "model"]


class PlanPriceFilter(filters.FilterSet):
    price_book = IdFilter(field_name="price_book_id")

    class Meta:
        model = PlanPrice
        fields = ["price_book", "tier"]


class InvoiceFilter(filters.FilterSet):
    account = IdFilter(field_name="account_id")
    period_from = UtcDateTimeFilter(field_name="period_start", lookup_expr="gte")
    period_to = UtcDateTimeFilter(field_name="period_end", lookup_expr="lte")

    class Meta:
        model = Invoice
        fields = ["account", "status", "kind", "number", "period_from", "period_to"]


class AuditEntryFilter(filters.FilterSet):
    at_from = UtcDateTimeFilter(field_name="at", lookup_expr="gte")
    at_to = UtcDateTimeFilter(field_name="at", lookup_expr="lt")

    class Meta:
        model = AuditEntry
        fields = ["actor", "action", "object_type", "object_id", "at_from", "at_to"]


class _UsageRangeForm(forms.Form):
    """[from, to) defaults to the last 30 days and may span at most USAGE_MAX_RANGE."""

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if self.errors:
            return cleaned
        until = cleaned.get("to") or timezone.now()
        try:
            since = cleaned.get("from") or until - USAGE_DEFAULT_RANGE
        except OverflowError:
            raise forms.ValidationError("`to` is too early.", code="overflow") from None
        if since >= until:
            raise forms.ValidationError("`from` must be before `to`.", code="empty_range")
        if until - since > USAGE_MAX_RANGE:
            raise forms.ValidationError(
                f"The range may span at most {USAGE_MAX_RANGE.days} days.", code="range_too_long"
            )
        cleaned.update({"from": since, "to": until})
        return cleaned


class UsageFilter(filters.FilterSet):
    """An account's own usage: [from, to), a model, a project; grouped by day, model and/or
    project."""

    from_ = UtcDateTimeFilter(field_name="started_at", lookup_expr="gte")
    to_ = UtcDateTimeFilter(field_name="started_at", lookup_expr="lt")
    model = filters.CharFilter()
    project = IdFilter(field_name="project_id")
    group_by = GroupByFilter(choices=[(name, name) for name in ("day", "model", "project")])

    class Meta:
        model = UsageRecord
        fields = ["from_", "to_", "model", "project", "group_by"]
        form = _UsageRangeForm

    @classmethod
    def get_filters(cls) -> Any:
        """The query names are `from` and `to`, which Python attributes cannot be."""
        declared = super().get_filters()
        declared["from"] = declared.pop("from_")
        declared["to"] = declared.pop("to_")
        return declared


class StaffUsageFilter(UsageFilter):
    """Every account's usage, or one account's, tier's, model's; grouped by any of them."""

    account = IdFilter(field_name="account_id")
    tier = filters.CharFilter()
    group_by = GroupByFilter(
        choices=[(name, name) for name in ("day", "model", "tier", "account", "project")]
    )

    class Meta(UsageFilter.Meta):
        fields = ["from_", "to_", "account", "tier", "model", "project", "group_by"]


class OrgUsageFilter(UsageFilter):
    """A member's view of their account's usage: also one key's (by its public id)."""

    key = filters.CharFilter(method="by_key", label="One key's usage (its key_id)")

    class Meta(UsageFilter.Meta):
        fields = ["from_", "to_", "model", "project", "key", "group_by"]

    def by_key(self, qs: QuerySet[UsageRecord], name: str, value: str) -> QuerySet[UsageRecord]:
        # Only a key of the records' own account can match: qs is already the account's.
        keys = ApiKey.objects.filter(key_id=value).values("pk")
        return qs.filter(api_key_id__in=keys)
