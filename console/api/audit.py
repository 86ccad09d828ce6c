# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""The audit log, read-only: who changed what, when, before and after."""

from rest_framework import serializers, viewsets

from audit.models import AuditEntry
from console.filters import AuditEntryFilter


class AuditEntrySerializer(serializers.ModelSerializer[AuditEntry]):
    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "at",
            "actor_user_id",
            "actor",
            "action",
            "object_type",
            "object_id",
            "before",
            "after",
            "remote_addr",
        ]
        read_only_fields = fields


class AuditEntryViewSet(viewsets.ReadOnlyModelViewSet[AuditEntry]):
    """Every change, newest first; filter by object, actor, action or time."""

    queryset = AuditEntry.objects.order_by("-at", "-id")
    serializer_class = AuditEntrySerializer
    filterset_class = AuditEntryFilter
