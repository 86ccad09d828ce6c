"""The console's page for the audit log: read only, each entry's change shown field by field."""

import json
from typing import Any

from django.contrib import admin
from django.template.loader import render_to_string

from audit.admin_base import ReadOnlyAdmin
from audit.diff import NONE, changes
from audit.models import AuditEntry

# How many changed fields the list names before it says how many more there are.
SUMMARY_FIELDS = 4


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin[AuditEntry]):
    """Every change made through the console, the API, the commands or the services."""

    list_display = ["at", "actor", "action", "object_label", "changed_fields", "remote_addr"]
    list_filter = ["action", "object_type"]
    search_fields = ["actor", "object_id", "object_type"]
    date_hierarchy = "at"
    fields = [
        "at",
        "actor",
        "actor_user_id",
        "action",
        "object_label",
        "remote_addr",
        "change_table",
        "full_record",
    ]
    readonly_fields = ["object_label", "change_table", "full_record"]

    @admin.display(description="object", ordering="object_type")
    def object_label(self, entry: AuditEntry) -> str:
        return f"{entry.object_type} {entry.object_id}"

    @admin.display(description="what changed")
    def changed_fields(self, entry: AuditEntry) -> str:
        names = [change.field for change in changes(entry.before, entry.after)]
        if not names:
            return NONE
        more = len(names) - SUMMARY_FIELDS
        shown = ", ".join(names[:SUMMARY_FIELDS])
        return f"{shown} and {more} more" if more > 0 else shown

    @admin.display(description="changes")
    def change_table(self, entry: AuditEntry) -> str:
        # A rendered template is safe HTML, which the read-only page shows as it is.
        return render_to_string(
            "audit/changes.html", {"changes": changes(entry.before, entry.after)}
        )

    @admin.display(description="full before and after")
    def full_record(self, entry: AuditEntry) -> str:
        return render_to_string(
            "audit/full_record.html", {"before": _json(entry.before), "after": _json(entry.after)}
        )


def _json(snapshot: dict[str, Any] | None) -> str:
    return NONE if snapshot is None else json.dumps(snapshot, indent=2, sort_keys=True)
