"""The console's page for the fleet's backends: enable and disable them, audited."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.admin_base import AuditedAdmin
from fleet.models import Backend
from fleet.services import backend_enabled_set


@admin.register(Backend)
class BackendAdmin(AuditedAdmin[Backend]):
    list_display = [
        "name",
        "base_url",
        "upstream_model",
        "max_concurrent_sequences",
        "enabled",
        "health",
        "health_checked_at",
    ]
    list_filter = ["enabled", "health"]
    search_fields = ["name", "base_url", "upstream_model"]
    actions = ["enable_backends", "disable_backends"]

    @admin.action(description="Enable the selected backends", permissions=["change"])
    def enable_backends(self, request: HttpRequest, queryset: QuerySet[Backend]) -> None:
        self._set_enabled(request, queryset, enabled=True)

    @admin.action(
        description="Disable the selected backends (no new requests are routed)",
        permissions=["change"],
    )
    def disable_backends(self, request: HttpRequest, queryset: QuerySet[Backend]) -> None:
        self._set_enabled(request, queryset, enabled=False)

    def _set_enabled(
        self, request: HttpRequest, queryset: QuerySet[Backend], *, enabled: bool
    ) -> None:
        for backend in queryset:
            backend_enabled_set(
                actor=request.user, backend=backend, enabled=enabled, request=request
            )
        messages.success(
            request, f"{queryset.count()} backend(s) {'en' if enabled else 'dis'}abled."
        )
