# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""Webhooks in the customer management API: /api/v1/org/webhooks/ (the account's endpoints)
and /api/v1/org/webhook-deliveries/ (what was sent to them), for owners and admins.

As everywhere under /api/v1/org/, querysets start from the token's account, so another
account's endpoint or delivery is a 404. An endpoint's signing secret is in the answers that
create or rotate it, and in reveal-secret's (audited); never in a list.
"""

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from console.api.common import actor
from console.api.org import MemberMixin, _id
from customers import webhooks
from customers.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from customers.webhook_delivery import webhook_url_validate


class WebhookEndpointSerializer(serializers.ModelSerializer[WebhookEndpoint]):
    url = serializers.URLField(
        max_length=500, help_text="Where events are POSTed: https, reachable on the internet."
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEvent.Type.choices),
        required=False,
        help_text="The event types it receives; empty: every type.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "description",
            "events",
            "enabled",
            "created_at",
            "previous_secret_expires_at",
        ]
        read_only_fields = ["id", "created_at", "previous_secret_expires_at"]
        extra_kwargs = {
            "previous_secret_expires_at": {
                "help_text": "Until when the previous secret signs too (after a rotation)."
            }
        }

    def validate_url(self, value: str) -> str:
        try:
            webhook_url_validate(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages[0]) from None
        return value


class WebhookEndpointSecretSerializer(WebhookEndpointSerializer):
    """An endpoint with its signing secret: the answer to creating or rotating it."""

    secret = serializers.CharField(
        read_only=True, help_text="The signing secret (whsec_...): verify each event with it."
    )

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]


def _refused(exc: webhooks.WebhookError) -> serializers.ValidationError:
    return serializers.ValidationError(str(exc))


class WebhookEndpointViewSet(
    MemberMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[WebhookEndpoint],
):
    """The account's webhook endpoints: events are POSTed to them as JSON, signed with the
    endpoint's secret (header TokenFactory-Signature), retried with back-off for a day."""

    queryset = WebhookEndpoint.objects.none()  # for the schema; get_queryset scopes the real one
    serializer_class = WebhookEndpointSerializer
    member_read = "webhooks.write"
    member_write = "webhooks.write"

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        return WebhookEndpoint.objects.filter(account_id=self.member.account_id).order_by("pk")

    @extend_schema(
        request=WebhookEndpointSerializer, responses={201: WebhookEndpointSecretSerializer}
    )
    def create(self, request: Request) -> Response:
        """A new endpoint; its secret is in this answer (and reveal-secret's)."""
        serializer = WebhookEndpointSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            endpoint = webhooks.webhook_endpoint_create(
                account=self.member.account,
                **serializer.validated_data,
                actor=actor(request),
                request=request,
            )
        except webhooks.WebhookError as exc:
            raise _refused(exc) from None
        return Response(
            WebhookEndpointSecretSerializer(endpoint).data, status=status.HTTP_201_CREATED
        )

    def perform_update(self, serializer: WebhookEndpointSerializer) -> None:
        assert serializer.instance is not None
        try:
            serializer.instance = webhooks.webhook_endpoint_update(
                endpoint=serializer.instance,
                data=serializer.validated_data,
                actor=actor(self.request),
                request=self.request,
            )
        except webhooks.WebhookError as exc:
            raise _refused(exc) from None

    def perform_destroy(self, instance: WebhookEndpoint) -> None:
        webhooks.webhook_endpoint_delete(
            endpoint=instance, actor=actor(self.request), request=self.request
        )

    @extend_schema(request=None, responses=WebhookEndpointSecretSerializer)
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str) -> Response:
        """A new secret; the previous one signs too (a second v1) for 24 hours."""
        endpoint = webhooks.webhook_endpoint_rotate_secret(
            endpoint=self.get_object(), actor=actor(request), request=request
        )
        return Response(WebhookEndpointSecretSerializer(endpoint).data)

    @extend_schema(
        request=None,
        responses=inline_serializer("WebhookSecret", {"secret": serializers.CharField()}),
    )
    @action(detail=True, methods=["post"], url_path="reveal-secret")
    def reveal_secret(self, request: Request, pk: str) -> Response:
        """The endpoint's signing secret (the reading is in the account's audit log)."""
        secret = webhooks.webhook_endpoint_reveal_secret(
            endpoint=self.get_object(), actor=actor(request), request=request
        )
        return Response({"secret": secret})


class WebhookDeliverySerializer(serializers.ModelSerializer[WebhookDelivery]):
    event = serializers.CharField(source="event.public_id", read_only=True)
    type = serializers.CharField(source="event.type", read_only=True)
    endpoint = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event",
            "type",
            "endpoint",
            "status",
            "attempts",
            "last_attempt_at",
            "last_status_code",
            "last_error",
            "next_attempt_at",
            "delivered_at",
            "created_at",
        ]
        read_only_fields = fields


class WebhookDeliveryViewSet(
    MemberMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet[WebhookDelivery],
):
    """Each event's delivery to each endpoint, newest first: pending (with the next attempt's
    time), delivered, or failed (after a day of attempts); replay sends one again now."""

    queryset = WebhookDelivery.objects.none()  # for the schema; get_queryset scopes it
    serializer_class = WebhookDeliverySerializer
    member_read = "webhooks.write"
    member_write = "webhooks.write"

    def get_queryset(self) -> QuerySet[WebhookDelivery]:
        deliveries = WebhookDelivery.objects.filter(
            endpoint__account_id=self.member.account_id
        ).select_related("event")
        if self.action == "list":
            params = self.request.query_params
            if (endpoint := params.get("endpoint")) is not None:
                deliveries = deliveries.filter(endpoint_id=_id(endpoint, "endpoint"))
            if (wanted := params.get("status")) is not None:
                if wanted not in WebhookDelivery.Status.values:
                    raise serializers.ValidationError(
                        {"status": [f"One of {', '.join(WebhookDelivery.Status.values)}."]}
                    )
                deliveries = deliveries.filter(status=wanted)
        return deliveries.order_by("-created_at", "-pk")

    @extend_schema(
        parameters=[
            OpenApiParameter("endpoint", OpenApiTypes.INT64, description="One endpoint's."),
            OpenApiParameter(
                "status",
                OpenApiTypes.STR,
                enum=WebhookDelivery.Status.values,
                description="Only deliveries in this state.",
            ),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=None, responses=WebhookDeliverySerializer)
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk: str) -> Response:
        """Send the event to its endpoint again now (a fresh signature, the same event id)."""
        delivery = webhooks.webhook_delivery_replay(
            delivery=self.get_object(), actor=actor(request), request=request
        )
        return Response(WebhookDeliverySerializer(delivery).data)
