# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""Staff endpoints for tenancy and the fleet: accounts, their projects, API keys, tiers,
backends.

Views parse input, call one service (customers.services, fleet.services or audit.services,
each of which records the change in the audit log) and serialise the result.
"""

from datetime import datetime
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from audit.services import object_create, object_delete, object_update
from console.api.common import actor
from console.filters import (
    AccountFilter,
    ApiKeyFilter,
    BackendFilter,
    ProjectFilter,
    TierFilter,
)
from console.models import Scope
from customers import services
from customers.models import LIMIT_FIELDS, Account, ApiKey, LimitOverride, Project, Tier
from customers.services import IssuedKey
from fleet.models import Backend
from fleet.services import backend_enabled_set


class LimitsSerializer(serializers.ModelSerializer[LimitOverride]):
    """An account's exceptions to its tier's limits; null (or absent) means "as the tier"."""

    class Meta:
        model = LimitOverride
        fields = list(LIMIT_FIELDS)


class ProjectSerializer(serializers.ModelSerializer[Project]):
    """A part of an account owning keys, with its own limits (null: as the account's) and
    budget; customers manage theirs (/api/v1/org/projects/), staff read them here."""

    class Meta:
        model = Project
        fields = [
            "id",
            "account",
            "name",
            "is_default",
            *LIMIT_FIELDS,
            "monthly_budget",
            "budget_hard_cap",
            "created_at",
            "archived_at",
        ]
        read_only_fields = fields


class AccountProjectSerializer(serializers.ModelSerializer[Project]):
    class Meta:
        model = Project
        fields = ["id", "name", "is_default", "archived_at"]
        read_only_fields = fields


class AccountSerializer(serializers.ModelSerializer[Account]):
    tier = serializers.SlugRelatedField(slug_field="slug", queryset=Tier.objects.all())
    limits = LimitsSerializer(
        required=False,
        allow_null=True,
        help_text="Overrides of the tier's limits; null removes them all.",
    )
    projects = AccountProjectSerializer(
        many=True, read_only=True, help_text="Its projects (a new account has its default one)."
    )

    class Meta:
        model = Account
        fields = [
            "id",
            "name",
            "status",
            "tier",
            "limits",
            "projects",
            "stripe_customer_id",
            "created_at",
        ]
        read_only_fields = ["status", "stripe_customer_id", "created_at"]

    def to_representation(self, instance: Account) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        data.setdefault("limits", None)  # the account has no override (DRF skips the field)
        return data


class AccountViewSet(viewsets.ModelViewSet[Account]):
    """Tenants. Suspending one stops all its keys within GATEWAY_KEY_CACHE_SECONDS."""

    queryset = (
        Account.objects.select_related("tier", "limits").prefetch_related("projects").order_by("pk")
    )
    serializer_class = AccountSerializer
    filterset_class = AccountFilter
    token_scope = Scope.BILLING
    action_permissions = {
        "suspend": ("customers.change_account",),
        "activate": ("customers.change_account",),
    }

    def perform_create(self, serializer: AccountSerializer) -> None:
        data = dict(serializer.validated_data)
        limits = data.pop("limits", None)
        serializer.instance = services.account_open(
            actor=actor(self.request), data=data, limits=limits, request=self.request
        )

    def perform_update(self, serializer: AccountSerializer) -> None:
        data = dict(serializer.validated_data)
        extra = {"limits": data.pop("limits")} if "limits" in data else {}
        assert serializer.instance is not None
        serializer.instance = services.account_update(
            actor=actor(self.request),
            account=serializer.instance,
            data=data,
            request=self.request,
            **extra,
        )

    def perform_destroy(self, instance: Account) -> None:
        services.account_delete(actor=actor(self.request), account=instance, request=self.request)

    @extend_schema(request=None, responses=AccountSerializer)
    @action(detail=True, methods=["post"])
    def suspend(self, request: Request, pk: str) -> Response:
        return self._status(Account.Status.SUSPENDED)

    @extend_schema(request=None, responses=AccountSerializer)
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, pk: str) -> Response:
        return self._status(Account.Status.ACTIVE)

    def _status(self, status_: str) -> Response:
        account = services.account_status_set(
            actor=actor(self.request),
            account=self.get_object(),
            status=status_,
            request=self.request,
        )
        return Response(AccountSerializer(account).data)


class ApiKeySerializer(serializers.ModelSerializer[ApiKey]):
    account = serializers.PrimaryKeyRelatedField(queryset=Account.objects.all())
    project = serializers.PrimaryKeyRelatedField(
        queryset=Project.objects.all(),
        required=False,
        help_text="One of the account's live projects; left out: its default project.",
    )
    prefix = serializers.SerializerMethodField(help_text="What the key starts with.")

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "key_id",
            "prefix",
            "account",
            "project",
            "created_by",
            "name",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]
        read_only_fields = ["key_id", "created_by", "created_at", "revoked_at", "last_used_at"]

    def get_prefix(self, api_key: ApiKey) -> str:
        return f"tf_{api_key.key_id}_"

    def validate_expires_at(self, value: datetime | None) -> datetime | None:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("A new key must expire in the future.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        project = attrs.get("project")
        if project is not None and project.account_id != attrs["account"].pk:
            raise serializers.ValidationError({"project": ["This is another account's project."]})
        if project is not None and project.archived_at is not None:
            raise serializers.ValidationError({"project": ["This project is archived."]})
        return attrs


class IssuedKeySerializer(ApiKeySerializer):
    """A key just issued: the only response that ever carries its secret."""

    key = serializers.CharField(
        read_only=True, help_text="The whole key. Shown once: store it now, it cannot be read back."
    )

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


def _issued(issued: IssuedKey) -> dict[str, Any]:
    data = dict(ApiKeySerializer(issued.api_key).data)
    data["key"] = issued.plaintext
    return data


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet[ApiKey],
):
    """Keys are issued, rotated and revoked, never edited; the secret is shown only on issue."""

    queryset = ApiKey.objects.order_by("pk")
    serializer_class = ApiKeySerializer
    filterset_class = ApiKeyFilter
    lookup_field = "key_id"
    token_scope = Scope.KEYS
    action_permissions = {
        "revoke": ("customers.change_apikey",),
        # A new key replaces the old one, which is revoked.
        "rotate": ("customers.add_apikey", "customers.change_apikey"),
    }

    @extend_schema(request=ApiKeySerializer, responses={201: IssuedKeySerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = ApiKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        issued = services.api_key_issue(
            actor=actor(request),
            account=data["account"],
            project=data.get("project"),
            name=data.get("name", ""),
            expires_at=data.get("expires_at"),
            request=request,
        )
        return Response(_issued(issued), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, key_id: str) -> Response:
        revoked = services.api_key_revoke(
            actor=actor(request), key_id=self.get_object().key_id, request=request
        )
        return Response(ApiKeySerializer(revoked).data)

    @extend_schema(request=None, responses={201: IssuedKeySerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, key_id: str) -> Response:
        issued = services.api_key_rotate(
            actor=actor(request), key_id=self.get_object().key_id, request=request
        )
        return Response(_issued(issued), status=status.HTTP_201_CREATED)


class ProjectViewSet(viewsets.ReadOnlyModelViewSet[Project]):
    """Every account's projects, archived ones included; filter by account."""

    queryset = Project.objects.order_by("account_id", "-is_default", "name", "pk")
    serializer_class = ProjectSerializer
    filterset_class = ProjectFilter


class AuditedModelViewSet(viewsets.ModelViewSet[Any]):
    """Create, update and delete through the audited services of audit/services.py."""

    def perform_create(self, serializer: serializers.BaseSerializer[Any]) -> None:
        serializer.instance = object_create(
            actor=actor(self.request),
            model=self.get_queryset().model,
            data=serializer.validated_data,
            request=self.request,
        )

    def perform_update(self, serializer: serializers.BaseSerializer[Any]) -> None:
        serializer.instance = object_update(
            actor=actor(self.request),
            instance=serializer.instance,
            data=serializer.validated_data,
            request=self.request,
        )

    def perform_destroy(self, instance: Any) -> None:
        object_delete(actor=actor(self.request), instance=instance, request=self.request)


class TierSerializer(serializers.ModelSerializer[Tier]):
    class Meta:
        model = Tier
        fields = [
            "id",
            "slug",
            "name",
            "priority",
            *LIMIT_FIELDS,
            "allowed_models",
            "queue_timeout_seconds",
            "queue_depth",
            "when_redis_down",
        ]
        extra_kwargs = {"queue_timeout_seconds": {"min_value": 0.0, "max_value": 86400.0}}


class TierViewSet(AuditedModelViewSet):
    """Tiers and their limits; a tier with accounts cannot be deleted (409)."""

    queryset = Tier.objects.order_by("priority", "pk")
    serializer_class = TierSerializer
    filterset_class = TierFilter
    token_scope = Scope.FLEET


class BackendSerializer(serializers.ModelSerializer[Backend]):
    class Meta:
        model = Backend
        fields = [
            "id",
            "name",
            "base_url",
            "upstream_model",
            "public_models",
            "max_concurrent_sequences",
            "supports_priority",
            "telemetry_url",
            "enabled",
            "health",
            "health_checked_at",
        ]
        read_only_fields = ["enabled", "health", "health_checked_at"]
        extra_kwargs = {"max_concurrent_sequences": {"min_value": 1, "max_value": 1_000_000}}

    def validate_base_url(self, value: str) -> str:
        return value.rstrip("/")


class BackendViewSet(AuditedModelViewSet):
    """Backends: registered here, taken out of routing with disable, back with enable."""

    queryset = Backend.objects.order_by("name")
    serializer_class = BackendSerializer
    filterset_class = BackendFilter
    token_scope = Scope.FLEET
    action_permissions = {
        "enable": ("fleet.change_backend",),
        "disable": ("fleet.change_backend",),
    }

    @extend_schema(request=None, responses=BackendSerializer)
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str) -> Response:
        return self._enabled(True)

    @extend_schema(request=None, responses=BackendSerializer)
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, pk: str) -> Response:
        return self._enabled(False)

    def _enabled(self, enabled: bool) -> Response:
        backend = backend_enabled_set(
            actor=actor(self.request),
            backend=self.get_object(),
            enabled=enabled,
            request=self.request,
        )
        return Response(BackendSerializer(backend).data)
