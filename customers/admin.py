"""The console's pages for tiers, accounts, projects, keys, budgets and webhooks, with their
actions.

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
from customers.models import (
    LIMIT_FIELDS,
    Account,
    ApiKey,
    Budget,
    LimitOverride,
    Project,
    Tier,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from customers.webhooks import webhook_delivery_replay


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


class ProjectForm(forms.ModelForm[Project]):
    """A project's limits stay within its account's (as the customer API checks)."""

    class Meta:
        model = Project
        fields = ["name", *LIMIT_FIELDS, "monthly_budget", "budget_hard_cap"]

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        errors = audited.project_limits_check(self.instance.account, cleaned)
        for name, message in errors.items():
            self.add_error(name, message)
        return cleaned


@admin.register(Project)
class ProjectAdmin(AuditedAdmin[Project]):
    """Projects: staff may correct a name, limits or a budget (customers do it in the portal);
    archiving revokes the project's keys, through customers.services."""

    list_display = [
        "name",
        "account",
        "is_default",
        "tokens_per_minute",
        "tokens_per_day",
        "monthly_budget",
        "budget_hard_cap",
        "archived_at",
    ]
    list_filter = ["is_default", "budget_hard_cap", "archived_at"]
    search_fields = ["name", "account__name"]
    form = ProjectForm
    readonly_fields = ["account", "is_default", "created_at", "archived_at"]
    actions = ["archive_projects"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # projects are made by their account's members, or with the account

    def has_delete_permission(self, request: HttpRequest, obj: Project | None = None) -> bool:
        return False  # archived, never deleted: usage and invoices keep naming them

    @admin.action(
        description="Archive the selected projects (their keys are revoked)",
        permissions=["change"],
    )
    def archive_projects(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        archived = 0
        for project in queryset.filter(archived_at=None):
            if project.is_default:
                messages.warning(request, f"{project.account}: the default project stays.")
                continue
            audited.project_archive(project=project, actor=request.user, request=request)
            archived += 1
        messages.success(request, f"{archived} project(s) archived, their keys revoked.")


class KeyIssueForm(forms.ModelForm[ApiKey]):
    class Meta:
        model = ApiKey
        fields = ["account", "project", "name", "expires_at"]
        help_texts = {"project": "Left empty: the account's default project."}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        project = self.fields["project"]
        assert isinstance(project, forms.ModelChoiceField)
        project.required = False
        project.queryset = Project.objects.filter(archived_at=None).select_related("account")

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        project, account = cleaned.get("project"), cleaned.get("account")
        if project is not None and account is not None and project.account_id != account.pk:
            self.add_error("project", "This is another account's project.")
        return cleaned


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin[ApiKey]):
    """Keys are issued here (the secret is shown once, on the page that answers the form),
    rotated and revoked; neither the secret nor its hash is ever displayed."""

    list_display = [
        "__str__",
        "key_id",
        "account",
        "project",
        "name",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    list_filter = ["revoked_at", "account__tier"]
    list_select_related = ["account", "project"]
    search_fields = ["key_id", "account__name", "project__name", "name"]
    fields = [
        "account",
        "project",
        "created_by",
        "name",
        "key_id",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    readonly_fields = [
        "account",
        "project",
        "created_by",
        "key_id",
        "created_at",
        "revoked_at",
        "last_used_at",
    ]
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
        return ["account", "project", "name", "expires_at"] if obj is None else self.fields

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
            project=form.cleaned_data["project"],
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


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(AuditedAdmin[WebhookEndpoint]):
    """Customers' endpoints: made by their members (portal, customer API), which check the
    address; staff may disable one, describe it or delete it. The secret is never shown here."""

    list_display = ["url", "account", "enabled", "events", "created_at"]
    list_filter = ["enabled"]
    list_select_related = ["account"]
    search_fields = ["url", "account__name"]
    fields = ["account", "url", "description", "events", "enabled", "created_at"]
    readonly_fields = ["account", "url", "events", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin[WebhookEvent]):
    """What was told to customers' endpoints: written by the changes themselves, read only."""

    list_display = ["public_id", "type", "account", "created_at"]
    list_filter = ["type"]
    list_select_related = ["account"]
    search_fields = ["public_id", "account__name"]
    readonly_fields = ["public_id", "account", "type", "data", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin[WebhookDelivery]):
    """Each event's delivery to each endpoint, with its attempts; "replay" sends one again
    now (audited), e.g. after a customer fixed an endpoint that failed for a day."""

    list_display = [
        "event",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "last_attempt_at",
        "next_attempt_at",
    ]
    list_filter = ["status", "event__type"]
    list_select_related = ["event", "endpoint"]
    search_fields = ["event__public_id", "endpoint__url", "endpoint__account__name"]
    readonly_fields = [
        "event",
        "endpoint",
        "status",
        "attempts",
        "next_attempt_at",
        "last_attempt_at",
        "last_status_code",
        "last_error",
        "delivered_at",
        "created_at",
    ]
    actions = ["replay_deliveries"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(
        description="Replay the selected deliveries (send again now)", permissions=["change"]
    )
    def replay_deliveries(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        for delivery in queryset:
            webhook_delivery_replay(delivery=delivery, actor=request.user, request=request)
        messages.success(request, f"{queryset.count()} deliveries will be sent again.")
