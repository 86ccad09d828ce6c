"""The console's billing pages: cost models editable until in force, the rest read-only.

A cost model in force has costed usage already; changing it would change the past, so it is
shown read-only and a change of costs is a new model (price books: catalogue/admin.py). Rollups,
margins, invoices and the Stripe mirror are written by billing's jobs alone (invoices are
closed and credited through billing.closing, which audits them). Forms are audited
by audit.admin_base.AuditedAdmin.
"""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone

from audit.admin_base import AuditedAdmin, ReadOnlyAdmin
from billing import closing as audited
from billing.models import (
    BudgetAlert,
    CostModel,
    Invoice,
    InvoiceLine,
    InvoiceNumber,
    JobRun,
    Margin,
    StripeEvent,
    UsageRollup,
)
from billing.money import to_minor
from billing.services import InvoiceError


def _in_force(obj: CostModel | None) -> bool:
    return obj is not None and obj.effective_from <= timezone.now()


@admin.register(CostModel)
class CostModelAdmin(AuditedAdmin[CostModel]):
    list_display = [
        "backend",
        "effective_from",
        "currency",
        "electricity_per_kwh",
        "pue",
        "gpu_cost_per_hour",
    ]
    list_filter = ["backend", "currency"]

    def has_change_permission(self, request: HttpRequest, obj: CostModel | None = None) -> bool:
        return not _in_force(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: CostModel | None = None) -> bool:
        return not _in_force(obj) and super().has_delete_permission(request, obj)


class InvoiceLineInline(admin.TabularInline[InvoiceLine, Invoice]):
    model = InvoiceLine
    extra = 0
    can_delete = False
    readonly_fields = [
        "item",
        "tier",
        "model",
        "price_book",
        "quantity",
        "unit_price",
        "amount",
        "amount_minor",
        "usage_from",
        "usage_to",
        "stripe_item_id",
    ]
    fields = tuple(readonly_fields)

    def has_add_permission(self, request: HttpRequest, obj: Invoice | None = None) -> bool:
        return False


class MonthCloseForm(forms.Form):
    month = forms.DateField(
        input_formats=["%Y-%m"],
        help_text="YYYY-MM. Every account's invoice of that month (UTC) is made, numbered and "
        "finalised; refused until the month and its grace window are over.",
    )


class CreditNoteForm(forms.Form):
    memo = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), help_text="Why; shown on it.")
    lines = forms.ModelMultipleChoiceField(
        queryset=InvoiceLine.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Whole lines to reverse exactly.",
    )
    amount = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        help_text="Or an amount to credit (in the invoice's currency), as one line.",
    )

    def __init__(self, *args: Any, invoice: Invoice, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.invoice = invoice
        self.fields["lines"].queryset = invoice.lines.order_by("pk")  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if bool(cleaned.get("lines")) == (cleaned.get("amount") is not None):
            raise forms.ValidationError("Credit either whole lines or an amount.")
        return cleaned


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin[Invoice]):
    """Invoices are made and finalised by closing a month, and corrected by credit notes,
    both here (pages of their own, audited by billing.closing) and in the API."""

    list_display = [
        "__str__",
        "account",
        "kind",
        "status",
        "period_start",
        "currency",
        "total_minor",
        "payment",
        "stripe_invoice_id",
    ]
    list_filter = ["status", "kind", "payment", "currency"]
    search_fields = ["number", "account__name", "stripe_invoice_id"]
    date_hierarchy = "period_start"
    inlines = [InvoiceLineInline]

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("close/", view(self.close_view), name="billing_invoice_close"),
            path(
                "<int:pk>/credit-note/",
                view(self.credit_note_view),
                name="billing_invoice_credit_note",
            ),
            *super().get_urls(),
        ]

    def close_view(self, request: HttpRequest) -> HttpResponse:
        self._may_invoice(request)
        form = MonthCloseForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            month = form.cleaned_data["month"]
            start = datetime(month.year, month.month, 1, tzinfo=UTC)
            try:
                result = audited.invoices_month_close(
                    actor=request.user, period_start=start, request=request
                )
            except InvoiceError as exc:
                form.add_error("month", str(exc))
            else:
                messages.success(
                    request, f"{start:%Y-%m}: {result.finalised} invoice(s) finalised."
                )
                for account, tier, model, tokens in result.unpriced:
                    messages.warning(
                        request, f"Account {account}: {tokens} {tier}/{model} tokens had no price."
                    )
                for late in result.late:
                    messages.info(
                        request,
                        f"Account {late.account_id}: {late.tokens} {late.tier}/{late.model} "
                        f"tokens of {late.month:%Y-%m} arrived after it closed: billed now.",
                    )
                for late in result.late_pending:
                    messages.warning(
                        request,
                        f"Account {late.account_id}: {late.tokens} {late.tier}/{late.model} "
                        f"tokens of {late.month:%Y-%m} arrived after it closed: the next close "
                        "bills them.",
                    )
                return redirect("admin:billing_invoice_changelist")
        return self._form_page(request, "Close a month", form)

    def credit_note_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        self._may_invoice(request)
        invoice = get_object_or_404(Invoice, pk=pk)
        form = CreditNoteForm(request.POST or None, invoice=invoice)
        if request.method == "POST" and form.is_valid():
            amount = form.cleaned_data["amount"]
            try:
                note = audited.credit_note_issue(
                    actor=request.user,
                    invoice=invoice,
                    memo=form.cleaned_data["memo"],
                    lines=list(form.cleaned_data["lines"]) or None,
                    amount_minor=None if amount is None else to_minor(amount, invoice.currency),
                    request=request,
                )
            except InvoiceError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Credit note {note} issued.")
                return redirect("admin:billing_invoice_change", note.pk)
        return self._form_page(request, f"Credit note for {invoice}", form)

    def _may_invoice(self, request: HttpRequest) -> None:
        if not request.user.has_perm("billing.change_invoice"):
            raise PermissionDenied

    def _form_page(self, request: HttpRequest, title: str, form: forms.Form) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "billing/admin_form.html", context)


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin[UsageRollup]):
    list_display = [
        "grain",
        "bucket",
        "account_id",
        "tier",
        "model",
        "backend",
        "requests",
        "revenue",
        "energy_cost",
        "gpu_cost",
    ]
    list_filter = ["grain", "tier", "backend"]
    date_hierarchy = "bucket"


@admin.register(Margin)
class MarginAdmin(ReadOnlyAdmin[Margin]):
    list_display = [
        "grain",
        "bucket",
        "dimension",
        "key",
        "revenue",
        "energy_cost",
        "gpu_cost",
        "margin",
        "margin_pct",
        "cost_per_million_tokens",
        "tokens_per_kwh",
        # The coverage of those ratios, and what has no price (docs/billing.md, "Coverage").
        "tokens",
        "measured_tokens",
        "costed_tokens",
        "unpriced_tokens",
    ]
    list_filter = ["grain", "dimension"]
    date_hierarchy = "bucket"


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin[BudgetAlert]):
    list_display = ["account", "period_start", "percent", "spent", "created_at"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin[StripeEvent]):
    list_display = ["event_id", "type", "received_at"]
    list_filter = ["type"]


@admin.register(InvoiceNumber)
class InvoiceNumberAdmin(ReadOnlyAdmin[InvoiceNumber]):
    list_display = ["prefix", "last"]


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin[JobRun]):
    list_display = ["job", "scope", "watermark", "finished_at"]
