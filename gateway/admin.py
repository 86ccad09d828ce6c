"""The console's pages for tiers, accounts, keys and backends, with their actions.

Forms are audited by console.admin_audit.AuditedAdmin; actions call the audited services of
console.services.gateway, shared with the management API.
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from console.admin_audit import AuditedAdmin
from console.services import gateway as audited
from gateway.models import Account, ApiKey, Backend, LimitOverride, Tier


@admin.register(Tier)
class TierAdmin(AuditedAdmin[Tier]):
    list_display = [
        "slug",
        "name",
        "priority",
        "requests_per_minute",
        "tokens_per_minute",
        "tokens_per_day",
        "max_concurrent_requests",
        "when_redis_down",
    ]
    search_fields = ["slug", "name"]


class LimitOverrideInline(admin.StackedInline[LimitOverride, Account]):
    model = LimitOverride
    extra = 0


@admin.register(Account)
class AccountAdmin(AuditedAdmin[Account]):
    list_display = ["name", "tier", "status", "created_at"]
    list_filter = ["tier", "status"]
    search_fields = ["name", "stripe_customer_id"]
    inlines = [LimitOverrideInline]
    actions = ["suspend_accounts", "activate_accounts"]

    @admin.action(
        description="Suspend the selected accounts (their keys stop working)",
        permissions=["change"],
    )
    def suspend_accounts(self, request: HttpRequest, queryset: QuerySet[Account]) -> None:
        self._set_status(request, queryset, Account.Status.SUSPENDED)

    @admin.action(description="Reactivate the selected accounts", permissions=["change"])
    def activate_accounts(self, request: HttpRequest, queryset: QuerySet[Account]) -> None:
        self._set_status(request, queryset, Account.Status.ACTIVE)

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Account], status: str) -> None:
        for account in queryset:
            audited.account_status_change(
                actor=request.user, account=account, status=status, request=request
            )
        messages.success(request, f"{queryset.count()} account(s) now {status}.")


class KeyIssueForm(forms.ModelForm[ApiKey]):
    class Meta:
        model = ApiKey
        fields = ["account", "name", "expires_at"]


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin[ApiKey]):
    """Keys are issued here (the secret is shown once, on the page that answers the form),
    rotated and revoked; neither the secret nor its hash is ever displayed."""

    list_display = [
        "__str__",
        "key_id",
        "account",
        "name",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    list_filter = ["revoked_at", "account__tier"]
    search_fields = ["key_id", "account__name", "name"]
    fields = ["account", "name", "key_id", "created_at", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = ["account", "key_id", "created_at", "revoked_at", "last_used_at"]
    actions = ["revoke_keys", "rotate_keys"]

    def get_form(
        self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm[ApiKey]]:
        if obj is None:
            return KeyIssueForm
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return [] if obj is None else self.readonly_fields

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return ["account", "name", "expires_at"] if obj is None else self.fields

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method != "POST":
            return super().add_view(request, form_url, extra_context)
        form = KeyIssueForm(request.POST)
        if not form.is_valid():
            return super().add_view(request, form_url, extra_context)
        issued = audited.api_key_issue(
            actor=request.user,
            account=form.cleaned_data["account"],
            name=form.cleaned_data["name"],
            expires_at=form.cleaned_data["expires_at"],
            request=request,
        )
        return self._show_secrets(request, "API key issued", [issued.plaintext])

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            audited.api_key_revoke(actor=request.user, api_key=key, request=request)
        messages.success(request, f"{queryset.count()} key(s) revoked.")

    @admin.action(
        description="Rotate the selected keys (new secrets, old keys revoked)",
        permissions=["add", "change"],
    )
    def rotate_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse:
        secrets = []
        for key in queryset.filter(revoked_at__isnull=True):
            issued = audited.api_key_rotate(actor=request.user, api_key=key, request=request)
            secrets.append(issued.plaintext)
        return self._show_secrets(request, "API keys rotated", secrets)

    def _show_secrets(self, request: HttpRequest, title: str, secrets: list[str]) -> HttpResponse:
        # Rendered into this response only: never stored, never in a message or the session.
        context = {**self.admin_site.each_context(request), "title": title, "secrets": secrets}
        response = TemplateResponse(request, "console/key_issued.html", context)
        response["Cache-Control"] = "no-store"
        return response


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
            audited.backend_enabled_change(
                actor=request.user, backend=backend, enabled=enabled, request=request
            )
        messages.success(
            request, f"{queryset.count()} backend(s) {'en' if enabled else 'dis'}abled."
        )
