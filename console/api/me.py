# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""Self-serve for key holders, authenticated by their own API key: /api/v1/me/.

Every queryset here starts from the calling key's account, so a key holder can reach nothing
of another account's: someone else's invoice or key is a 404, as if it did not exist.
Limits and what is left of them are read as GET /v1/usage reads them (Redis, the gateway's
script); usage by day and model comes from the ledger in PostgreSQL.
"""

from typing import Any

import redis
from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.models import Invoice
from console.api.authentication import ApiKeyAuthentication
from console.api.billing import InvoiceDetailSerializer, InvoiceSerializer
from console.api.common import Pagination, actor
from console.api.errors import Unavailable
from console.api.permissions import IsKeyHolder, key_holder
from console.api.usage import UsagePage, UsageViewBase, usage_parameters
from console.selectors import account_limits, account_standing
from customers import services
from customers.models import LIMIT_FIELDS, Account, ApiKey, Project
from metering.models import UsageRecord


class KeyHolderMixin:
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsKeyHolder]
    pagination_class = Pagination


class EffectiveLimitsSerializer(serializers.Serializer[Any]):
    """Each of LIMIT_FIELDS: the override's value, else the tier's; null is unlimited."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {name: serializers.IntegerField(allow_null=True) for name in LIMIT_FIELDS}


class RemainingSerializer(serializers.Serializer[Any]):
    """What is left of each limit now; null where the limit is unlimited."""

    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)
    tokens_today = serializers.IntegerField(allow_null=True)
    tokens_this_month = serializers.IntegerField(allow_null=True)
    concurrent_requests = serializers.IntegerField(allow_null=True)


class MeProjectSerializer(serializers.Serializer[Project]):
    """The calling key's project: its own limits (null: as the account's) and budget."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    is_default = serializers.BooleanField()
    limits = serializers.SerializerMethodField()
    monthly_budget = serializers.DecimalField(max_digits=18, decimal_places=6, allow_null=True)
    budget_hard_cap = serializers.BooleanField()

    @extend_schema_field(EffectiveLimitsSerializer)
    def get_limits(self, project: Project) -> dict[str, int | None]:
        return {name: getattr(project, name) for name in LIMIT_FIELDS}


class CreditsSerializer(serializers.Serializer[Any]):
    """A prepaid account's credit, as GET /v1/usage shows it: exact decimal strings of
    billing's currency."""

    currency = serializers.CharField()
    # Available now, requests in flight held at their most possible cost; null while it cannot
    # be read (Redis lost the counters and billing has not rebuilt them yet).
    balance = serializers.CharField(allow_null=True)
    # Held for requests in flight; what they do not cost comes back when they finish.
    reserved = serializers.CharField()


class MeSerializer(serializers.Serializer[Any]):
    account = serializers.DictField()
    key = serializers.DictField()
    project = MeProjectSerializer()
    tier = serializers.CharField()
    limits = EffectiveLimitsSerializer()
    remaining = RemainingSerializer()
    credits = CreditsSerializer(allow_null=True, help_text="Null unless the account is prepaid.")


class MeView(KeyHolderMixin, APIView):
    """The caller's account, key, its project, tier, limits and what is left of them now."""

    @extend_schema(responses=MeSerializer)
    def get(self, request: Request) -> Response:
        api_key = key_holder(request)
        account = api_key.account
        limits = account_limits(account)
        try:
            standing = account_standing(
                account_id=account.pk,
                now=timezone.now(),
                prepaid=account.billing_mode == Account.Billing.PREPAID,
            )
        except redis.RedisError as exc:
            raise Unavailable("Limits cannot be read right now; retry shortly.") from exc
        return Response(
            {
                "account": {"id": account.pk, "name": account.name, "status": account.status},
                "key": {
                    "key_id": api_key.key_id,
                    "name": api_key.name,
                    "expires_at": api_key.expires_at,
                },
                "project": MeProjectSerializer(api_key.project).data,
                "tier": account.tier.slug,
                "limits": EffectiveLimitsSerializer(limits).data,
                "remaining": {
                    "requests_per_minute": _left(
                        limits.requests_per_minute, standing.requests_last_minute
                    ),
                    "tokens_per_minute": _left(
                        limits.tokens_per_minute, standing.tokens_last_minute
                    ),
                    "tokens_today": _left(limits.tokens_per_day, standing.tokens_today),
                    "tokens_this_month": _left(limits.tokens_per_month, standing.tokens_this_month),
                    "concurrent_requests": _left(limits.max_concurrent_requests, standing.running),
                },
                "credits": (
                    None
                    if standing.credit is None
                    else standing.credit.shown(settings.BILLING.currency)
                ),
            }
        )


def _left(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(0, limit - used)


class MeUsageView(KeyHolderMixin, UsageViewBase):
    """The caller's account's usage in [from, to), by day, model and/or project (default day
    and model); filter by model or project."""

    def records(self) -> QuerySet[UsageRecord]:
        return UsageRecord.objects.filter(account_id=key_holder(self.request).account_id)

    @extend_schema(
        responses=UsagePage, parameters=usage_parameters(("day", "model", "project"), staff=False)
    )
    def get(self, request: Request) -> Response:
        return super().get(request)


class MeInvoiceViewSet(
    KeyHolderMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet[Invoice],
):
    """The caller's account's finalised invoices and credit notes; drafts are not shown."""

    queryset = Invoice.objects.none()  # for the schema; get_queryset scopes the real one
    serializer_class = InvoiceSerializer
    filterset_class = None

    def get_queryset(self) -> QuerySet[Invoice]:
        return Invoice.objects.filter(
            account_id=key_holder(self.request).account_id, status=Invoice.Status.FINALISED
        ).order_by("-period_start", "-pk")

    def get_serializer_class(self) -> type[InvoiceSerializer]:
        return InvoiceDetailSerializer if self.action != "list" else InvoiceSerializer


class MeKeySerializer(serializers.ModelSerializer[ApiKey]):
    class Meta:
        model = ApiKey
        fields = ["key_id", "name", "created_at", "expires_at", "revoked_at", "last_used_at"]
        read_only_fields = fields


class MeKeyViewSet(
    KeyHolderMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet[ApiKey],
):
    """The caller's account's keys (never their secrets); any of them can be revoked here."""

    queryset = ApiKey.objects.none()  # for the schema; get_queryset scopes the real one
    serializer_class = MeKeySerializer
    lookup_field = "key_id"
    filterset_class = None

    def get_queryset(self) -> QuerySet[ApiKey]:
        account_id = key_holder(self.request).account_id
        return ApiKey.objects.filter(account_id=account_id).order_by("pk")

    @extend_schema(request=None, responses=MeKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, key_id: str) -> Response:
        revoked = services.api_key_revoke(
            actor=actor(request), key_id=self.get_object().key_id, request=request
        )
        return Response(MeKeySerializer(revoked).data)
