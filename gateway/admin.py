from django.contrib import admin

from gateway.models import Account, ApiKey, Backend, Tier


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin[Tier]):
    list_display = ["slug", "name", "priority", "requests_per_minute", "tokens_per_minute"]


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin[Account]):
    list_display = ["name", "tier", "status", "created_at"]
    list_filter = ["tier", "status"]
    search_fields = ["name"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    # Keys are issued with `manage.py issue_key` (the secret is shown once there); the admin
    # only shows and revokes them, and never displays even the hash.
    list_display = [
        "__str__",
        "account",
        "name",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    list_filter = ["revoked_at"]
    search_fields = ["key_id", "account__name", "name"]
    fields = ["account", "name", "key_id", "created_at", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = ["account", "key_id", "created_at", "last_used_at"]

    def has_add_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin[Backend]):
    list_display = ["name", "base_url", "upstream_model", "enabled", "health", "health_checked_at"]
    list_filter = ["enabled", "health"]
