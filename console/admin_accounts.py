"""The console's account and key pages with what each used and spent this month, and the
account's "Invite owner" (a new customer's first step: customers.members.owner_add, then the
invitation email, customers/mail.py).

customers/ is a bottom app and knows nothing of usage or prices, so the columns are added
here, in the layer over billing and metering: the pages of customers.admin are subclassed and
registered again in their place (imported from console/admin.py). The keys listed on an
account's page are read-only: they are issued, rotated and revoked on the key pages, whose
actions call customers' audited services.

**Spend** is as docs/billing.md defines it ("Spend caps"): the month's usage (UTC, so far) at
list prices in billing's currency, before included tokens and the plan fee. It is computed in
PostgreSQL (console/sql/key_month_usage.sql), one query for a whole page: an account's keys on
its page, the listed keys on the key list.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from billing.jobs import month_start, next_month
from billing.money import money_text
from billing.rating import FEE_EXEMPT
from billing.selectors import billing_currency
from config.db_routing import reading
from customers.admin import AccountAdmin, ApiKeyAdmin
from customers.mail import invitation_send
from customers.members import MemberError, owner_add
from customers.models import Account, ApiKey, Invitation, Project

_KEY_MONTH_USAGE = (Path(__file__).parent / "sql" / "key_month_usage.sql").read_text()


@dataclass(frozen=True, slots=True)
class MonthUsage:
    """Requests, tokens and spend (exact, billing's currency) of the month so far."""

    requests: int = 0
    tokens: int = 0
    spend: Decimal = Decimal(0)

    def __add__(self, other: "MonthUsage") -> "MonthUsage":
        return MonthUsage(
            self.requests + other.requests, self.tokens + other.tokens, self.spend + other.spend
        )


def key_month_usage(
    *, account_ids: Iterable[int], key_ids: Sequence[int] | None = None, now: datetime
) -> dict[int, MonthUsage]:
    """Each key's usage this month (UTC) up to `now`, by key id, of the accounts given (only
    the keys in `key_ids` where given); keys without usage are left out."""
    if key_ids is not None and not key_ids:
        return {}
    params: dict[str, Any] = {
        "since": month_start(now),
        "until": next_month(now),
        "currency": billing_currency(),
        "fee_exempt": FEE_EXEMPT,
        "account_ids": sorted(set(account_ids)),
        "key_ids": None if key_ids is None else list(key_ids),
    }
    with reading().cursor() as cursor:
        cursor.execute(_KEY_MONTH_USAGE, params)
        return {
            key_id: MonthUsage(requests, tokens, spend)
            for key_id, _account_id, requests, tokens, spend in cursor.fetchall()
        }


def spend_html(amount: Decimal) -> SafeString:
    """The amount in billing's currency as a person reads it, the exact amount on hover."""
    currency = billing_currency()
    return format_html(
        '<span title="{} {}">{}</span>', f"{amount:f}", currency, money_text(amount, currency)
    )


def _when(at: datetime | None) -> str:
    return "—" if at is None else formats.localize(timezone.localtime(at))


class AccountUsageAdmin(AccountAdmin):
    """An account's page also shows this month's usage and spend, and its keys with theirs."""

    month_fields = ("requests_this_month", "tokens_this_month", "spend_this_month")
    # Read-only here: projects and members are changed by the customer (portal, /api/v1/org/)
    # or on the project pages, through the audited services.
    tables = ("projects", "api_keys", "members", "invitations")

    def get_readonly_fields(self, request: HttpRequest, obj: Account | None = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        return fields if obj is None else [*fields, *self.month_fields, *self.tables]

    def get_fieldsets(self, request: HttpRequest, obj: Account | None = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        ours = {*self.month_fields, *self.tables}
        plain = [
            (name, {**options, "fields": [f for f in options["fields"] if f not in ours]})
            for name, options in fieldsets
        ]
        return [
            *plain,
            ("This month so far (UTC)", {"fields": list(self.month_fields)}),
            ("Projects", {"fields": ["projects"]}),
            ("API keys", {"fields": ["api_keys"]}),
            ("Members", {"fields": ["members", "invitations"]}),
        ]

    def get_urls(self) -> list[URLPattern]:
        invite = path(
            "<path:object_id>/invite-owner/",
            self.admin_site.admin_view(self.invite_owner_view),
            name="customers_account_invite_owner",
        )
        return [invite, *super().get_urls()]

    def invite_owner_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Invite the account's owner by email: the link (/portal/invite/<secret>/) goes in
        the email only. Audited by the service; the email is undone with it if sending fails."""
        account = self.get_object(request, object_id)
        if account is None:
            raise Http404
        if not self.has_change_permission(request, account):
            raise PermissionDenied
        form = InviteOwnerForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            email = form.cleaned_data["email"]
            try:
                with transaction.atomic():
                    sent = owner_add(
                        account=account, email=email, actor=request.user, request=request
                    )
                    invitation_send(sent, request=request)
            except MemberError as exc:
                form.add_error("email", str(exc))
            else:
                messages.success(request, f"Invitation sent to {sent.invitation.email}.")
                return redirect("admin:customers_account_change", account.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Invite an owner to {account}",
            "account": account,
            "form": form,
            "opts": self.opts,
        }
        return TemplateResponse(request, "console/invite_owner.html", context)

    @admin.display(description="Projects")
    def projects(self, obj: Account) -> SafeString:
        rows = format_html_join(
            "",
            "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    reverse("admin:customers_project_change", args=[p.pk]),
                    p.name,
                    "default" if p.is_default else "",
                    _limit(p.requests_per_minute),
                    _limit(p.tokens_per_minute),
                    _limit(p.tokens_per_day),
                    _limit(p.tokens_per_month),
                    _budget(p),
                    _when(p.archived_at),
                )
                for p in obj.projects.order_by("-is_default", "name", "pk")
            ),
        )
        return format_html(
            "<table class='account-projects'><thead><tr><th>Project</th><th></th>"
            "<th>Requests/min</th><th>Tokens/min</th><th>Tokens/day</th><th>Tokens/month</th>"
            "<th>Monthly budget</th><th>Archived</th></tr></thead><tbody>{}</tbody></table>"
            "<p class='help'>Limits: blank is as the account's.</p>",
            rows,
        )

    @admin.display(description="Members")
    def members(self, obj: Account) -> SafeString:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    m.user.email,
                    m.role,
                    ", ".join(p.name for p in m.projects.all()) if m.role == "developer" else "all",
                    _when(m.created_at),
                )
                for m in obj.members.select_related("user").prefetch_related("projects")
            ),
        )
        return format_html(
            "<table class='account-members'><thead><tr><th>Email</th><th>Role</th>"
            "<th>Projects</th><th>Since</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="Invitations")
    def invitations(self, obj: Account) -> SafeString:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (i.email, i.role, i.invited_by, _when(i.created_at), _invitation_state(i))
                for i in obj.invitations.order_by("-created_at", "-pk")
            ),
        )
        link = reverse("admin:customers_account_invite_owner", args=[obj.pk])
        return format_html(
            "<table class='account-invitations'><thead><tr><th>Email</th><th>Role</th>"
            "<th>Invited by</th><th>Sent</th><th>State</th></tr></thead><tbody>{}</tbody></table>"
            "<p><a class='button' id='invite-owner' href='{}'>Invite an owner</a></p>",
            rows,
            link,
        )

    @admin.display(description="Requests")
    def requests_this_month(self, obj: Account) -> str:
        return f"{_month(obj).requests:,}"

    @admin.display(description="Tokens")
    def tokens_this_month(self, obj: Account) -> str:
        return f"{_month(obj).tokens:,}"

    @admin.display(description="Spend (usage at list prices, before included tokens and fee)")
    def spend_this_month(self, obj: Account) -> SafeString:
        return spend_html(_month(obj).spend)

    @admin.display(description="Keys")
    def api_keys(self, obj: Account) -> SafeString:
        keys = list(obj.api_keys.select_related("project").order_by("-created_at", "-pk"))
        if not keys:
            return format_html("{}", "No keys: issue one on the API keys page.")
        usage = _keys_month(obj)
        rows = format_html_join(
            "",
            "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    reverse("admin:customers_apikey_change", args=[key.pk]),
                    str(key),
                    key.project.name,
                    key.name,
                    _when(key.created_at),
                    _when(key.expires_at),
                    _when(key.revoked_at),
                    _when(key.last_used_at),
                    f"{usage.get(key.pk, MonthUsage()).requests:,}",
                    f"{usage.get(key.pk, MonthUsage()).tokens:,}",
                    spend_html(usage.get(key.pk, MonthUsage()).spend),
                )
                for key in keys
            ),
        )
        return format_html(
            "<table class='account-keys'><thead><tr><th>Key</th><th>Project</th><th>Name</th>"
            "<th>Created</th>"
            "<th>Expires</th><th>Revoked</th><th>Last used</th><th>Requests this month</th>"
            "<th>Tokens this month</th><th>Spend this month</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )


def _limit(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _budget(project: Project) -> str:
    if project.monthly_budget is None:
        return ""
    cap = " (hard cap)" if project.budget_hard_cap else ""
    return f"{money_text(project.monthly_budget, billing_currency())}{cap}"


class InviteOwnerForm(forms.Form):
    email = forms.EmailField(help_text="The new owner's address: the invitation link goes there.")


def _invitation_state(invitation: Invitation) -> str:
    if invitation.accepted_at is not None:
        return "accepted"
    if invitation.revoked_at is not None:
        return "revoked"
    return "expired" if invitation.expires_at <= timezone.now() else "open"


def _keys_month(account: Account) -> dict[int, MonthUsage]:
    """The account's keys' usage this month, read once per page (kept on the instance)."""
    cached: dict[int, MonthUsage] | None = getattr(account, "_console_keys_month", None)
    if cached is None:
        cached = key_month_usage(account_ids=[account.pk], now=timezone.now())
        account._console_keys_month = cached  # type: ignore[attr-defined]
    return cached


def _month(account: Account) -> MonthUsage:
    """The account's usage this month: its keys' together (a deleted key's included)."""
    return sum(_keys_month(account).values(), MonthUsage())


class KeySpendChangeList(ChangeList):
    """The key list, with the listed keys' usage this month read in one query."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        keys: list[ApiKey] = list(self.result_list)
        usage = key_month_usage(
            account_ids=[key.account_id for key in keys],
            key_ids=[key.pk for key in keys],
            now=timezone.now(),
        )
        for key in keys:
            key._console_month = usage.get(key.pk, MonthUsage())  # type: ignore[attr-defined]


def _after_name(columns: Sequence[Any], column: str) -> list[Any]:
    """`columns` with `column` after the name (in sight without scrolling sideways)."""
    at = columns.index("name") + 1 if "name" in columns else len(columns)
    return [*columns[:at], column, *columns[at:]]


class ApiKeyUsageAdmin(ApiKeyAdmin):
    """The key list also shows each key's spend this month."""

    list_display = _after_name(ApiKeyAdmin.list_display, "spend_this_month")
    list_select_related = ["account", "project"]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return KeySpendChangeList

    @admin.display(description="spend this month")
    def spend_this_month(self, obj: ApiKey) -> SafeString:
        month: MonthUsage | None = getattr(obj, "_console_month", None)
        return spend_html(month.spend if month is not None else Decimal(0))


def register(site: admin.AdminSite) -> None:
    """Put these pages in place of customers.admin's on `site`."""
    for model, page in ((Account, AccountUsageAdmin), (ApiKey, ApiKeyUsageAdmin)):
        if site.is_registered(model):
            site.unregister(model)
        site.register(model, page)
