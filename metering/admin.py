from django.contrib import admin

from metering.models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin[UsageRecord]):
    """Read-only: the ledger is written by the meter alone."""

    list_display = [
        "request_id",
        "started_at",
        "account_id",
        "tier",
        "model",
        "backend",
        "prompt_tokens",
        "completion_tokens",
        "outcome",
        "tokens_estimated",
    ]
    list_filter = ["outcome", "tier", "streamed", "tokens_estimated"]
    date_hierarchy = "started_at"

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False
