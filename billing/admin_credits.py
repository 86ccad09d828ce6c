"""The console's prepaid credit pages: grants with what is left of each and the account's
balance, the ledger, and each account's credit settings.

Ledger rows are never edited or deleted (the database refuses too): staff add a grant, or
refund or correct one, through billing.credits, which audits each movement.
"""

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from audit.admin_base import AuditedAdmin, ReadOnlyAdmin
from billing.admin_forms import form_page
from billing.admin_money import money_cell
from billing.credits import CreditError, credit_correct, credit_grant, credit_refund
from billing.models import CreditEntry, CreditGrant, CreditSettings
from billing.selectors import billing_currency, credit_balance
from customers.models import Account


class GrantForm(forms.Form):
    account = forms.ModelChoiceField(queryset=Account.objects.order_by("name"))
    amount = forms.DecimalField(min_value=Decimal("0.01"), decimal_places=12, max_digits=20)
    source = forms.ChoiceField(choices=CreditGrant.Source.choices)
    effective_from = forms.DateTimeField(required=False, help_text="Empty: now (UTC).")
    expires_at = forms.DateTimeField(required=False, help_text="Empty: never expires.")
    priority = forms.IntegerField(
        initial=0, help_text="Drawn first among grants expiring together."
    )
    memo = forms.CharField(widget=forms.Textarea, required=False)


class MovementForm(forms.Form):
    amount = forms.DecimalField(decimal_places=12, max_digits=20)
    memo = forms.CharField(widget=forms.Textarea)


@admin.register(CreditGrant)
class CreditGrantAdmin(ReadOnlyAdmin[CreditGrant]):
    list_display = [
        "id",
        "account",
        "source",
        "amount_shown",
        "remaining",
        "account_balance",
        "effective_from",
        "expires_at",
        "priority",
        "reference",
    ]
    list_filter = ["source", "currency"]
    search_fields = ["account__name", "reference"]
    readonly_fields = ["movements"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[CreditGrant]:
        return super().get_queryset(request).annotate(left=Sum("entries__amount"))

    @admin.display(description="amount", ordering="amount")
    def amount_shown(self, grant: CreditGrant) -> str:
        return money_cell(grant.amount, grant.currency)

    @admin.display(description="left", ordering="left")
    def remaining(self, grant: Any) -> str:
        return money_cell(grant.left or Decimal(0), grant.currency)

    @admin.display(description="account's balance")
    def account_balance(self, grant: CreditGrant) -> str:
        return money_cell(credit_balance(grant.account), grant.currency)

    @admin.display(description="refund or correct")
    def movements(self, grant: CreditGrant) -> str:
        return format_html(
            '<a href="{}">Refund</a> · <a href="{}">Correct</a> · <a href="{}">Ledger</a>',
            reverse("admin:billing_creditgrant_refund", args=[grant.pk]),
            reverse("admin:billing_creditgrant_correct", args=[grant.pk]),
            reverse("admin:billing_creditentry_changelist") + f"?grant__id__exact={grant.pk}",
        )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("billing.add_creditgrant")

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/refund/", view(self.refund_view), name="billing_creditgrant_refund"),
            path("<int:pk>/correct/", view(self.correct_view), name="billing_creditgrant_correct"),
            *super().get_urls(),
        ]

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = GrantForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                grant = credit_grant(
                    account=data["account"],
                    amount=data["amount"],
                    source=data["source"],
                    effective_from=data["effective_from"],
                    expires_at=data["expires_at"],
                    priority=data["priority"],
                    actor=request.user,
                    memo=data["memo"],
                    request=request,
                )
            except CreditError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Granted {grant.amount} {grant.currency}.")
                return redirect("admin:billing_creditgrant_changelist")
        return form_page(self, request, f"Grant credit ({billing_currency()})", form)

    def refund_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._movement(request, pk, "Refund", credit_refund)

    def correct_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._movement(request, pk, "Correct", credit_correct)

    def _movement(self, request: HttpRequest, pk: int, verb: str, service: Any) -> HttpResponse:
        if not request.user.has_perm("billing.add_creditentry"):
            raise PermissionDenied
        grant = get_object_or_404(CreditGrant, pk=pk)
        form = MovementForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                service(
                    grant=grant,
                    amount=form.cleaned_data["amount"],
                    actor=request.user,
                    memo=form.cleaned_data["memo"],
                    request=request,
                )
            except CreditError as exc:
                form.add_error("amount", str(exc))
            else:
                messages.success(request, f"{verb}: recorded in the ledger.")
                return redirect("admin:billing_creditgrant_change", grant.pk)
        return form_page(self, request, f"{verb} grant {grant.pk} of {grant.account}", form)


@admin.register(CreditEntry)
class CreditEntryAdmin(ReadOnlyAdmin[CreditEntry]):
    list_display = ["created_at", "account", "kind", "grant", "amount_shown", "period", "actor"]
    list_filter = ["kind"]
    search_fields = ["account__name", "memo"]
    list_select_related = ["account", "grant"]

    @admin.display(description="amount", ordering="amount")
    def amount_shown(self, entry: CreditEntry) -> str:
        return money_cell(entry.amount, billing_currency())


@admin.register(CreditSettings)
class CreditSettingsAdmin(AuditedAdmin[CreditSettings]):
    list_display = [
        "account",
        "low_balance_threshold",
        "auto_topup_enabled",
        "auto_topup_threshold",
        "auto_topup_amount",
        "auto_topup_monthly_cap",
        "state",
    ]
    readonly_fields = ["state"]
