"""The console's pages for tiers, accounts, keys and budgets, with their actions.

Forms are audited by audit.admin_base.AuditedAdmin; actions call the audited services of
customers.services, shared with the management API.
"""

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from audit.admin_base import AuditedAdmin
from customers import services as audited
from customers.models import Account, ApiKey, Budget, LimitOverride, Tier


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
            audited.account_status_set(
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
            audited.api_key_revoke(actor=request.user, key_id=key.key_id, request=request)
        messages.success(request, f"{queryset.count()} key(s) revoked.")

    @admin.action(
        description="Rotate the selected keys (new secrets, old keys revoked)",
        permissions=["add", "change"],
    )
    def rotate_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse:
        secrets = []
        for key in queryset.filter(revoked_at__isnull=True):
            issued = audited.api_key_rotate(actor=request.user, key_id=key.key_id, request=request)
            secrets.append(issued.plaintext)
        return self._show_secrets(request, "API keys rotated", secrets)

    def _show_secrets(self, request: HttpRequest, title: str, secrets: list[str]) -> HttpResponse:
        # Rendered into this response only: never stored, never in a message or the session.
        context = {**self.admin_site.each_context(request), "title": title, "secrets": secrets}
        response = TemplateResponse(request, "console/key_issued.html", context)
        response["Cache-Control"] = "no-store"
        return response


@admin.register(Budget)
class BudgetAdmin(AuditedAdmin[Budget]):
    """Budgets are in billing's currency: the form offers it, and refuses any other
    (Budget.clean)."""

    list_display = ["account", "monthly_limit", "currency", "alert_percents", "hard_cap"]
    list_filter = ["hard_cap", "currency"]
    search_fields = ["account__name"]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {
            **super().get_changeform_initial_data(request),
            "currency": settings.BILLING.currency,
        }
