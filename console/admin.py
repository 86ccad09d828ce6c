"""The console's pages for the audit log and the staff API's tokens."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from console.admin_audit import ReadOnlyAdmin
from console.models import AuditEntry, StaffToken
from console.tokens import staff_token_revoke


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin[AuditEntry]):
    """Every change made through the console, the API or the services: append-only."""

    list_display = ["at", "actor", "action", "object_type", "object_id", "remote_addr"]
    list_filter = ["action", "object_type"]
    search_fields = ["actor", "object_id", "object_type"]
    date_hierarchy = "at"
    fields = [
        "at",
        "actor",
        "actor_user_id",
        "action",
        "object_type",
        "object_id",
        "remote_addr",
        "before",
        "after",
    ]


@admin.register(StaffToken)
class StaffTokenAdmin(ReadOnlyAdmin[StaffToken]):
    """Tokens are issued with `manage.py staff_token` (the secret is printed once); here they
    are listed and revoked. Neither the secret nor its hash is shown."""

    list_display = ["__str__", "user", "name", "created_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["token_id", "user__username", "name"]
    fields = ["user", "name", "token_id", "created_at", "expires_at", "revoked_at"]
    actions = ["revoke_tokens"]

    @admin.action(description="Revoke the selected tokens", permissions=["view"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[StaffToken]) -> None:
        revoked = [
            staff_token_revoke(actor=request.user, token=token, request=request)
            for token in queryset.filter(revoked_at__isnull=True)
        ]
        messages.success(request, f"{len(revoked)} token(s) revoked.")
