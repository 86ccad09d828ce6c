# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""What the customer management API (/api/v1/org/) reads and answers.

Every serializer that names other objects (a key's project, a member's projects) is given
the calling member in its context and offers only what that member reaches, so an id of
another account's object is refused as unknown, exactly like an id that does not exist.
"""

from datetime import datetime
from typing import Any, cast

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from customers.members import member_projects
from customers.models import (
    HARD_CAP_MOST,
    LIMIT_FIELDS,
    Account,
    ApiKey,
    Invitation,
    Member,
    MemberToken,
    Project,
)
from customers.services import project_limits_check


def _member(serializer: serializers.Field[Any, Any, Any, Any]) -> Member:
    member: Member = serializer.context["member"]
    return member


def reachable(member: Member) -> QuerySet[Project]:
    """The live projects the member works in, as a queryset."""
    return cast(QuerySet[Project], member_projects(member))


@extend_schema_field(OpenApiTypes.INT64)
class ReachableProjectField(serializers.PrimaryKeyRelatedField[Project]):
    """A live project the calling member works in (context["member"]); any other id is
    "does not exist"."""

    def get_queryset(self) -> QuerySet[Project]:
        return reachable(_member(self))


class OrgSerializer(serializers.Serializer[Account]):
    """The calling member's account and their place in it."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    tier = serializers.CharField(source="tier.slug")
    role = serializers.SerializerMethodField(help_text="The caller's role in this account.")
    member = serializers.SerializerMethodField(help_text="The caller's membership id.")

    def get_role(self, account: Account) -> str:
        return _member(self).role

    def get_member(self, account: Account) -> int:
        return _member(self).pk


class OrgProjectLimitsSerializer(serializers.ModelSerializer[Project]):
    """A project's own limits: null means "as the account"; each at most the account's."""

    class Meta:
        model = Project
        fields = list(LIMIT_FIELDS)


class OrgProjectSerializer(serializers.ModelSerializer[Project]):
    limits = OrgProjectLimitsSerializer(
        source="*",
        required=False,
        help_text=(
            "Limits narrowing the account's for this project's keys; a field left out is "
            "unchanged, null means as the account."
        ),
    )
    monthly_budget = serializers.DecimalField(
        max_digits=18,
        decimal_places=6,
        min_value=0,
        allow_null=True,
        required=False,
        help_text="Spend cap per calendar month in the budget currency; null: none.",
    )
    currency = serializers.SerializerMethodField(help_text="The currency of the budget.")

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "is_default",
            "limits",
            "monthly_budget",
            "currency",
            "budget_hard_cap",
            "created_at",
            "archived_at",
        ]
        read_only_fields = ["is_default", "created_at", "archived_at"]

    def get_currency(self, project: Project) -> str:
        return str(settings.BILLING.currency)

    def validate_name(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("A project needs a name.")
        live = Project.objects.filter(account_id=_member(self).account_id, archived_at=None)
        if self.instance is not None:
            live = live.exclude(pk=self.instance.pk)
        if live.filter(name=value).exists():
            raise serializers.ValidationError(f"A project of this account is named {value!r}.")
        return value

    def validate_monthly_budget(self, value: Any) -> Any:
        if value is not None and value <= 0:
            raise serializers.ValidationError("A budget must be more than 0 (null: none).")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        limits = {name: attrs[name] for name in LIMIT_FIELDS if name in attrs}
        errors: dict[str, Any] = {}
        wrong = project_limits_check(_member(self).account, limits)
        if wrong:
            errors["limits"] = {name: [message] for name, message in wrong.items()}
        budget = attrs.get("monthly_budget", getattr(self.instance, "monthly_budget", None))
        hard = attrs.get("budget_hard_cap", getattr(self.instance, "budget_hard_cap", False))
        if hard and budget is None:
            errors["budget_hard_cap"] = ["A hard cap needs a monthly_budget."]
        elif hard and budget is not None and budget > HARD_CAP_MOST:
            errors["monthly_budget"] = [f"A hard cap can be at most {HARD_CAP_MOST:,}."]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class OrgKeySerializer(serializers.ModelSerializer[ApiKey]):
    """An API key of the account, never its secret."""

    prefix = serializers.SerializerMethodField(help_text="What the key starts with.")
    project = serializers.PrimaryKeyRelatedField(read_only=True)
    created_by = serializers.PrimaryKeyRelatedField(
        read_only=True, help_text="The member who made it; null: our staff."
    )

    class Meta:
        model = ApiKey
        fields = [
            "key_id",
            "prefix",
            "name",
            "project",
            "created_by",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]
        read_only_fields = fields

    def get_prefix(self, api_key: ApiKey) -> str:
        return f"tf_{api_key.key_id}_"


class OrgKeyCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    project = ReachableProjectField(
        required=False,
        help_text="One of your live projects; left out: the account's default project.",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_expires_at(self, value: datetime | None) -> datetime | None:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("A new key must expire in the future.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "project" not in attrs:
            default = Project.objects.get(account_id=_member(self).account_id, is_default=True)
            if not reachable(_member(self)).filter(pk=default.pk).exists():
                raise serializers.ValidationError(
                    {"project": ["Name the project: you do not work in the default one."]}
                )
            attrs["project"] = default
        return attrs


class IssuedOrgKeySerializer(OrgKeySerializer):
    """A key just made: the only answer that ever carries its secret."""

    key = serializers.CharField(
        read_only=True, help_text="The whole key. Shown once: store it now, it cannot be read back."
    )

    class Meta(OrgKeySerializer.Meta):
        fields = [*OrgKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class MemberSerializer(serializers.ModelSerializer[Member]):
    email = serializers.EmailField(source="user.email", read_only=True)
    role = serializers.ChoiceField(choices=Member.Role.choices, required=False)
    projects = ReachableProjectField(
        many=True,
        required=False,
        help_text="The projects a developer works in (other roles reach every project).",
    )

    class Meta:
        model = Member
        fields = ["id", "email", "role", "projects", "created_at"]
        read_only_fields = ["id", "email", "created_at"]


class InvitationSerializer(serializers.ModelSerializer[Invitation]):
    role = serializers.ChoiceField(choices=Member.Role.choices)
    projects = ReachableProjectField(
        many=True, required=False, help_text="The projects of an invited developer."
    )
    state = serializers.SerializerMethodField(
        help_text="open, accepted, revoked or expired (an open one can be revoked)."
    )

    class Meta:
        model = Invitation
        fields = [
            "id",
            "email",
            "role",
            "projects",
            "state",
            "invited_by",
            "created_at",
            "expires_at",
            "accepted_at",
            "revoked_at",
        ]
        read_only_fields = [
            "id",
            "invited_by",
            "created_at",
            "expires_at",
            "accepted_at",
            "revoked_at",
        ]

    def get_state(self, invitation: Invitation) -> str:
        if invitation.accepted_at is not None:
            return "accepted"
        if invitation.revoked_at is not None:
            return "revoked"
        return "expired" if invitation.expires_at <= timezone.now() else "open"


class MemberTokenSerializer(serializers.ModelSerializer[MemberToken]):
    """One of the caller's own tokens for this API, never its secret."""

    prefix = serializers.SerializerMethodField(help_text="What the token starts with.")

    class Meta:
        model = MemberToken
        fields = [
            "token_id",
            "prefix",
            "name",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]
        read_only_fields = ["token_id", "created_at", "revoked_at", "last_used_at"]
        extra_kwargs = {"name": {"required": False}, "expires_at": {"required": False}}

    def get_prefix(self, token: MemberToken) -> str:
        return f"tfm_{token.token_id}_"

    def validate_expires_at(self, value: datetime | None) -> datetime | None:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("A new token must expire in the future.")
        return value


class IssuedMemberTokenSerializer(MemberTokenSerializer):
    token = serializers.CharField(
        read_only=True,
        help_text="The whole token. Shown once: store it now, it cannot be read back.",
    )

    class Meta(MemberTokenSerializer.Meta):
        fields = [*MemberTokenSerializer.Meta.fields, "token"]
