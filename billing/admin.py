"""The console's billing pages: cost models editable until in force, the rest read-only.

A cost model in force has costed usage already; changing it would change the past, so it is
shown read-only and a change of costs is a new model (price books: catalogue/admin.py). Rollups,
margins, invoices and the Stripe mirror are written by billing's jobs alone (invoices are
closed and credited through billing.closing, which audits them). Forms are audited
by audit.admin_base.AuditedAdmin. Money is shown by currency, rounded, with the exact amount
in its title and on the invoice's own page (billing.admin_money).
"""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import URLPattern, path
from django.utils import timezone

from audit.admin_base import AuditedAdmin, ReadOnlyAdmin
from billing import closing as audited
from billing.admin_forms import CostModelForm, form_page
from billing.admin_money import exact_text, minor_cell, money_cell, percent_text
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
from billing.money import minor_exponent, minor_text, to_minor
from billing.selectors import billing_currency
from billing.services import InvoiceError, invoice_credit_left


def _in_force(obj: CostModel | None) -> bool:
    return obj is not None and obj.effective_from <= timezone.now()


@admin.register(CostModel)
class CostModelAdmin(AuditedAdmin[CostModel]):
    form = CostModelForm
    list_display = [
        "backend",
        "effective_from",
        "currency",
        "electricity",
        "pue",
        "gpu_cost",
    ]
    list_filter = ["backend", "currency"]

    @admin.display(description="electricity per kWh", ordering="electricity_per_kwh")
    def electricity(self, obj: CostModel) -> str:
        return exact_text(obj.electricity_per_kwh, obj.currency)

    @admin.display(description="GPU cost per hour", ordering="gpu_cost_per_hour")
    def gpu_cost(self, obj: CostModel) -> str:
        return exact_text(obj.gpu_cost_per_hour, obj.currency)

    def has_change_permission(self, request: HttpRequest, obj: CostModel | None = None) -> bool:
        return not _in_force(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: CostModel | None = None) -> bool:
        return not _in_force(obj) and super().has_delete_permission(request, obj)


# What a line's unit price is per; a credit line's "price" is the amount credited.
_PRICE_UNITS = {"request_fee": "request", "plan_fee": "month", "credit": ""}


class InvoiceLineInline(admin.TabularInline[InvoiceLine, Invoice]):
    """The lines as the invoice shows them: each amount rounded (its minor units) beside the
    exact amount it rounds, and the unit price in full."""

    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = (
        "item",
        "tier",
        "model",
        "price_book",
        "quantity_shown",
        "price",
        "amount_shown",
        "exact_amount",
        "usage_from",
        "usage_to",
        "stripe_item_id",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Invoice | None = None) -> bool:
        return False

    @admin.display(description="quantity")
    def quantity_shown(self, line: InvoiceLine) -> str:
        return f"{line.quantity:,}"

    @admin.display(description="unit price")
    def price(self, line: InvoiceLine) -> str:
        price = exact_text(line.unit_price, line.invoice.currency)
        unit = _PRICE_UNITS.get(line.item, "1M tokens")
        return f"{price} per {unit}" if unit else price

    @admin.display(description="amount")
    def amount_shown(self, line: InvoiceLine) -> str:
        return minor_text(line.amount_minor, line.invoice.currency)

    @admin.display(description="exact amount")
    def exact_amount(self, line: InvoiceLine) -> str:
        return exact_text(line.amount, line.invoice.currency)


class MonthCloseForm(forms.Form):
    month = forms.DateField(
        input_formats=["%Y-%m"],
        help_text="YYYY-MM. Every account's invoice of that month (UTC) is made, numbered and "
        "finalised; refused until the month and its grace window are over.",
    )


class CreditLinesField(forms.ModelMultipleChoiceField[InvoiceLine]):
    """The invoice's lines, each named with what it charged."""

    def label_from_instance(self, line: InvoiceLine) -> str:
        charged = minor_text(line.amount_minor, line.invoice.currency)
        return f"{line.item} {line.tier}/{line.model or '-'} ({line.quantity:,}): {charged}"


class CreditNoteForm(forms.Form):
    """What staff credit, as they think of it: whole lines, or an amount typed as a positive
    number in the invoice's currency (billing.services.credit_note_issue negates it)."""

    memo = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), help_text="Why; shown on it.")
    lines = CreditLinesField(
        queryset=InvoiceLine.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Whole lines to reverse exactly.",
    )
    amount = forms.DecimalField(required=False, label="Amount to credit")

    def __init__(self, *args: Any, invoice: Invoice, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.invoice = invoice
        lines = invoice.lines.select_related("invoice").order_by("pk")
        self.fields["lines"].queryset = lines  # type: ignore[attr-defined]
        left = minor_text(invoice_credit_left(invoice=invoice), invoice.currency)
        self.fields["amount"].help_text = (
            f"Or an amount to credit, as one line: a positive number in {invoice.currency}, "
            f"at most {left} (what is left to credit on this invoice)."
        )

    def clean_amount(self) -> Decimal | None:
        amount: Decimal | None = self.cleaned_data.get("amount")
        if amount is None:
            return None
        currency = self.invoice.currency
        if amount <= 0:
            raise forms.ValidationError(
                "Enter the amount to credit as a positive number: the credit note subtracts "
                "it from the invoice."
            )
        if to_minor(amount, currency) != amount.scaleb(minor_exponent(currency)):
            raise forms.ValidationError(
                f"{currency} amounts have at most {minor_exponent(currency)} decimal places."
            )
        return amount

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
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
        "total",
        "payment",
        "stripe_invoice_id",
    ]
    list_filter = ["status", "kind", "payment", "currency"]
    # Its own page: the total rounded and the exact amount it rounds, in full.
    fields = [
        "account",
        "kind",
        "corrects",
        "number",
        "status",
        "period_start",
        "period_end",
        "currency",
        "total",
        "exact_amount",
        "created_at",
        "finalised_at",
        "memo",
        "stripe_invoice_id",
        "payment",
        "paid_at",
    ]
    readonly_fields = ["total", "exact_amount"]
    search_fields = ["number", "account__name", "stripe_invoice_id"]
    date_hierarchy = "period_start"
    inlines = [InvoiceLineInline]

    @admin.display(description="total", ordering="total_minor")
    def total(self, invoice: Invoice) -> str:
        return minor_cell(invoice.total_minor, invoice.amount, invoice.currency)

    @admin.display(description="exact amount")
    def exact_amount(self, invoice: Invoice) -> str:
        """The lines' unrounded sum, which the total rounds once (half to even)."""
        return exact_text(invoice.amount, invoice.currency)

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
        return form_page(self, request, "Close a month", form)

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
                form.add_error("amount" if amount is not None else None, str(exc))
            else:
                messages.success(request, f"Credit note {note} issued.")
                return redirect("admin:billing_invoice_change", note.pk)
        return form_page(self, request, f"Credit note for {invoice}", form)

    def _may_invoice(self, request: HttpRequest) -> None:
        if not request.user.has_perm("billing.change_invoice"):
            raise PermissionDenied


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
        "revenue_shown",
        "energy_cost_shown",
        "gpu_cost_shown",
    ]
    list_filter = ["grain", "tier", "backend"]
    date_hierarchy = "bucket"

    # Rollups are rated and costed in billing's currency (billing.rollups).
    @admin.display(description="revenue", ordering="revenue")
    def revenue_shown(self, rollup: UsageRollup) -> str:
        return money_cell(rollup.revenue, billing_currency())

    @admin.display(description="energy cost", ordering="energy_cost")
    def energy_cost_shown(self, rollup: UsageRollup) -> str:
        return money_cell(rollup.energy_cost, billing_currency())

    @admin.display(description="GPU cost", ordering="gpu_cost")
    def gpu_cost_shown(self, rollup: UsageRollup) -> str:
        return money_cell(rollup.gpu_cost, billing_currency())


@admin.register(Margin)
class MarginAdmin(ReadOnlyAdmin[Margin]):
    list_display = [
        "grain",
        "bucket",
        "dimension",
        "key",
        "revenue_shown",
        "energy_cost_shown",
        "gpu_cost_shown",
        "margin_shown",
        "margin_percent",
        "cost_per_million",
        "tokens_per_kwh",
        # The coverage of those ratios, and what has no price (docs/billing.md, "Coverage").
        "tokens",
        "measured_tokens",
        "costed_tokens",
        "unpriced_tokens",
    ]
    list_filter = ["grain", "dimension"]
    date_hierarchy = "bucket"

    @admin.display(description="revenue", ordering="revenue")
    def revenue_shown(self, margin: Margin) -> str:
        return money_cell(margin.revenue, margin.currency)

    @admin.display(description="energy cost", ordering="energy_cost")
    def energy_cost_shown(self, margin: Margin) -> str:
        return money_cell(margin.energy_cost, margin.currency)

    @admin.display(description="GPU cost", ordering="gpu_cost")
    def gpu_cost_shown(self, margin: Margin) -> str:
        return money_cell(margin.gpu_cost, margin.currency)

    @admin.display(description="margin", ordering="margin")
    def margin_shown(self, margin: Margin) -> str:
        return money_cell(margin.margin, margin.currency)

    @admin.display(description="margin %", ordering="margin_pct")
    def margin_percent(self, margin: Margin) -> str:
        return percent_text(margin.margin_pct)

    @admin.display(description="cost per 1M tokens", ordering="cost_per_million_tokens")
    def cost_per_million(self, margin: Margin) -> str:
        return money_cell(margin.cost_per_million_tokens, margin.currency)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin[BudgetAlert]):
    list_display = ["account", "period_start", "percent", "spent_shown", "created_at"]

    # Budgets are in billing's currency, the one spend is rated in (customers.models.Budget).
    @admin.display(description="spent", ordering="spent")
    def spent_shown(self, alert: BudgetAlert) -> str:
        return money_cell(alert.spent, billing_currency())


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


# The prepaid credit pages (a module of their own).
from billing import admin_credits  # noqa: E402, F401
