# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""The customer management API, /api/v1/org/: a member runs their own account with a member
token (`tfm_...`), as the customer portal does with a session.

Every queryset starts from the token's account (and, for a developer, their projects), so
another account's project, key, member or invitation is a 404, exactly like an id that does
not exist. What a role may do is customers.members.may (MemberPermission: 403 naming the
roles needed). Views parse input, call one audited service (customers.services,
customers.members) and serialise the result; a change the rules refuse is a 400 with the
rule's message, and changes nothing.
"""

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.api.authentication import MemberTokenAuthentication
from console.api.common import Pagination, actor
from console.api.errors import Conflict
from console.api.org_serializers import (
    InvitationSerializer,
    IssuedMemberTokenSerializer,
    IssuedOrgKeySerializer,
    MemberSerializer,
    MemberTokenSerializer,
    OrgKeyCreateSerializer,
    OrgKeySerializer,
    OrgProjectSerializer,
    OrgSerializer,
)
from console.api.permissions import MemberPermission, calling_member
from console.api.usage import UsagePage, UsageViewBase, usage_parameters
from console.filters import OrgUsageFilter
from customers import members, services
from customers.mail import invitation_send
from customers.members import MemberError
from customers.models import ApiKey, Invitation, Member, MemberToken, Project
from metering.models import UsageRecord

Role = Member.Role


class MemberMixin:
    """Behind a member token only; `member` is the caller."""

    authentication_classes = [MemberTokenAuthentication]
    permission_classes = [MemberPermission]
    pagination_class = Pagination
    filterset_class: Any = None
    request: Request

    @property
    def member(self) -> Member:
        return calling_member(self.request)

    def get_serializer_context(self) -> dict[str, Any]:
        context: dict[str, Any] = super().get_serializer_context()  # type: ignore[misc]
        context["member"] = self.member
        return context

    def _owner_only(self, what: str) -> None:
        """403 unless the caller is an owner (the services refuse it too, as a 400)."""
        if self.member.role != Role.OWNER:
            raise exceptions.PermissionDenied(
                f"This needs the role owner: only an owner can {what}.", code="role_required"
            )


def _refused(exc: MemberError | ValueError) -> serializers.ValidationError:
    """A rule of the services, as the 400 the caller reads."""
    message = str(exc)
    return serializers.ValidationError(message[:1].upper() + message[1:])


class OrgView(MemberMixin, APIView):
    """The caller's account (organisation), its tier, and the caller's role in it."""

    member_read = None

    @extend_schema(responses=OrgSerializer)
    def get(self, request: Request) -> Response:
        member = self.member
        return Response(OrgSerializer(member.account, context={"member": member}).data)


class ProjectViewSet(
    MemberMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet[Project],
):
    """The account's projects (a developer's own only), archived ones included. A project is
    archived, never deleted: archiving revokes its keys."""

    queryset = Project.objects.none()  # for the schema; get_queryset scopes the real one
    serializer_class = OrgProjectSerializer
    member_read = "projects.read"
    member_write = "projects.write"

    def get_queryset(self) -> QuerySet[Project]:
        member = self.member
        projects = Project.objects.filter(account_id=member.account_id)
        if member.role == Role.DEVELOPER:
            projects = projects.filter(members=member)
        return projects.select_related("account__tier").order_by("-is_default", "name", "pk")

    def perform_create(self, serializer: OrgProjectSerializer) -> None:
        data = dict(serializer.validated_data)
        serializer.instance = services.project_create(
            account=self.member.account,
            name=data.pop("name"),
            data=data,
            actor=actor(self.request),
            request=self.request,
        )

    def perform_update(self, serializer: OrgProjectSerializer) -> None:
        assert serializer.instance is not None
        if serializer.instance.archived_at is not None:
            raise Conflict("An archived project cannot be changed.", code="archived")
        serializer.instance = services.project_update(
            project=serializer.instance,
            data=serializer.validated_data,
            actor=actor(self.request),
            request=self.request,
        )

    @extend_schema(request=None, responses=OrgProjectSerializer)
    @action(detail=True, methods=["post"])
    def archive(self, request: Request, pk: str) -> Response:
        """Archive the project and revoke its keys (gateways refuse them within their key
        cache time). The default project cannot be archived."""
        project = self.get_object()
        if project.is_default:
            raise serializers.ValidationError(
                "The default project cannot be archived: keys made without a project go there."
            )
        archived = services.project_archive(project=project, actor=actor(request), request=request)
        return Response(OrgProjectSerializer(archived, context=self.get_serializer_context()).data)


class KeyViewSet(
    MemberMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet[ApiKey],
):
    """The account's API keys (a developer's: those of their projects), never their secrets:
    a key's secret is in the answer that made it, once."""

    queryset = ApiKey.objects.none()  # for the schema; get_queryset scopes the real one
    serializer_class = OrgKeySerializer
    lookup_field = "key_id"
    member_read = "keys.read"
    member_write = "keys.write"

    def get_queryset(self) -> QuerySet[ApiKey]:
        member = self.member
        keys = ApiKey.objects.filter(account_id=member.account_id)
        if member.role == Role.DEVELOPER:
            keys = keys.filter(project__members=member)
        project = self.request.query_params.get("project")
        if project is not None and self.action == "list":
            keys = keys.filter(project_id=_id(project, "project"))
        return keys.order_by("-created_at", "-pk")

    @extend_schema(
        parameters=[
            OpenApiParameter("project", OpenApiTypes.INT64, description="One project's keys.")
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=OrgKeyCreateSerializer, responses={201: IssuedOrgKeySerializer})
    def create(self, request: Request) -> Response:
        """A new key in one of your projects; its secret is in this answer only."""
        serializer = OrgKeyCreateSerializer(
            data=request.data, context=self.get_serializer_context()
        )
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            issued = services.api_key_issue(
                account=self.member.account,
                project=data["project"],
                name=data["name"],
                expires_at=data["expires_at"],
                created_by=self.member,
                actor=actor(request),
                request=request,
            )
        except ValueError as exc:
            raise _refused(exc) from None
        body = dict(OrgKeySerializer(issued.api_key).data)
        body["key"] = issued.plaintext
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=OrgKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, key_id: str) -> Response:
        """Revoke the key: gateways refuse it within their key cache time."""
        revoked = services.api_key_revoke(
            key_id=self.get_object().key_id, actor=actor(request), request=request
        )
        return Response(OrgKeySerializer(revoked).data)


def _id(value: str, name: str) -> int:
    """A query parameter naming an id; anything else is a 400, not an empty page."""
    if not value.isdigit() or not 0 < int(value) < 2**63:
        raise serializers.ValidationError({name: ["A valid id is required."]})
    return int(value)


class MemberViewSet(
    MemberMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[Member],
):
    """The account's members: change a role or a developer's projects, or remove a member
    (their tokens and the keys they made are revoked). Only an owner makes, unmakes or
    removes an owner; an account keeps at least one."""

    queryset = Member.objects.none()  # for the schema; get_queryset scopes the real one
    serializer_class = MemberSerializer
    member_read = "members.read"
    member_write = "members.write"

    def get_queryset(self) -> QuerySet[Member]:
        return (
            Member.objects.filter(account_id=self.member.account_id)
            .select_related("user")
            .prefetch_related("projects")
            .order_by("created_at", "pk")
        )

    def perform_update(self, serializer: MemberSerializer) -> None:
        target = serializer.instance
        assert target is not None
        data = serializer.validated_data
        role = data.get("role", target.role)
        if role != target.role and Role.OWNER in (role, target.role):
            self._owner_only("make or unmake an owner")
        try:
            serializer.instance = members.member_update(
                member=target,
                role=data.get("role"),
                projects=data.get("projects"),
                actor=actor(self.request),
                request=self.request,
            )
        except MemberError as exc:
            raise _refused(exc) from None

    def perform_destroy(self, instance: Member) -> None:
        if instance.role == Role.OWNER:
            self._owner_only("remove an owner")
        try:
            members.member_remove(member=instance, actor=actor(self.request), request=self.request)
        except MemberError as exc:
            raise _refused(exc) from None


class InvitationViewSet(
    MemberMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet[Invitation],
):
    """Invitations to join the account, newest first. Making one emails its link (valid
    once, for 7 days) to the address; only an owner invites an owner."""

    queryset = Invitation.objects.none()  # for the schema; get_queryset scopes the real one
    serializer_class = InvitationSerializer
    member_read = "members.read"
    member_write = "members.write"

    def get_queryset(self) -> QuerySet[Invitation]:
        return (
            Invitation.objects.filter(account_id=self.member.account_id)
            .select_related("account")
            .prefetch_related("projects")
            .order_by("-created_at", "-pk")
        )

    def perform_create(self, serializer: InvitationSerializer) -> None:
        data = serializer.validated_data
        if data["role"] == Role.OWNER:
            self._owner_only("invite an owner")
        # The mail is sent inside the transaction: an invitation whose mail failed is undone.
        with transaction.atomic():
            try:
                sent = members.invitation_create(
                    account=self.member.account,
                    email=data["email"],
                    role=data["role"],
                    projects=data.get("projects", ()),
                    actor=actor(self.request),
                    request=self.request,
                )
            except MemberError as exc:
                raise _refused(exc) from None
            invitation_send(sent, request=self.request)
        serializer.instance = sent.invitation

    @extend_schema(request=None, responses=InvitationSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        """Revoke an open invitation: its link stops working."""
        revoked = members.invitation_revoke(
            invitation=self.get_object(), actor=actor(request), request=request
        )
        return Response(InvitationSerializer(revoked, context=self.get_serializer_context()).data)


class MemberTokenViewSet(
    MemberMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet[MemberToken],
):
    """The caller's own tokens for this API (any role), never their secrets. A token acts as
    its member and dies with the membership."""

    queryset = MemberToken.objects.none()  # for the schema; get_queryset scopes the real one
    serializer_class = MemberTokenSerializer
    lookup_field = "token_id"
    member_read = None
    member_write = None

    def get_queryset(self) -> QuerySet[MemberToken]:
        return MemberToken.objects.filter(member=self.member).order_by("-created_at", "-pk")

    @extend_schema(request=MemberTokenSerializer, responses={201: IssuedMemberTokenSerializer})
    def create(self, request: Request) -> Response:
        """A new token for yourself; its secret is in this answer only."""
        serializer = MemberTokenSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = members.member_token_issue(
            member=self.member,
            name=serializer.validated_data.get("name", ""),
            expires_at=serializer.validated_data.get("expires_at"),
            actor=actor(request),
            request=request,
        )
        body = dict(MemberTokenSerializer(issued.token).data)
        body["token"] = issued.plaintext
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=MemberTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, token_id: str) -> Response:
        """Stop the token working at once (revoking the token you call with is allowed)."""
        revoked = members.member_token_revoke(
            token=self.get_object(), actor=actor(request), request=request
        )
        return Response(MemberTokenSerializer(revoked).data)


class OrgUsageView(MemberMixin, UsageViewBase):
    """The account's usage in [from, to) (a developer's: their projects'), by day, model
    and/or project (default day and model); filter by project, key or model."""

    filterset_class = OrgUsageFilter
    member_read = "usage.read"

    def records(self) -> QuerySet[UsageRecord]:
        member = self.member
        records = UsageRecord.objects.filter(account_id=member.account_id)
        if member.role == Role.DEVELOPER:
            records = records.filter(project_id__in=member.projects.values("pk"))
        return records

    @extend_schema(
        responses=UsagePage,
        parameters=usage_parameters(
            ("day", "model", "project"),
            staff=False,
            extra=[OpenApiParameter("key", OpenApiTypes.STR, description="One key's usage.")],
        ),
        filters=False,
    )
    def get(self, request: Request) -> Response:
        return super().get(request)
