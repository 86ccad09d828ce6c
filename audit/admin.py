"""The console's page for the audit log: read only."""

from django.contrib import admin

from audit.admin_base import ReadOnlyAdmin
from audit.models import AuditEntry


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
