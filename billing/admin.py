"""The console's billing pages: prices and costs editable until in force, the rest read-only.

A price book or cost model in force has priced or costed usage already; changing it would
change the past, so it is shown read-only and a change of prices is a new book. Rollups,
margins, invoices and the Stripe mirror are written by billing's jobs alone (invoices are
closed and credited through console.services.invoices, which audits them). Forms are audited
by console.admin_audit.AuditedAdmin.
"""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from billing.models import (
    Budget,
    BudgetAlert,
    CostModel,
    Invoice,
    InvoiceLine,
    InvoiceNumber,
    JobRun,
    Margin,
    PlanPrice,
    Price,
    PriceBook,
    StripeEvent,
    UsageRollup,
)
from console.admin_audit import AuditedAdmin


def _in_force(obj: PriceBook | CostModel | None) -> bool:
    return obj is not None and obj.effective_from <= timezone.now()


class ReadOnlyAdmin(admin.ModelAdmin[Any]):
    """Viewable by staff, written by billing's jobs and services only."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _BookItemInline(admin.TabularInline[Any, PriceBook]):
    extra = 0

    def has_add_permission(self, request: HttpRequest, obj: PriceBook | None = None) -> bool:
        return not _in_force(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: PriceBook | None = None) -> bool:
        return not _in_force(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: PriceBook | None = None) -> bool:
        return not _in_force(obj) and super().has_delete_permission(request, obj)


class PriceInline(_BookItemInline):
    model = Price


class PlanPriceInline(_BookItemInline):
    model = PlanPrice


@admin.register(PriceBook)
class PriceBookAdmin(AuditedAdmin[PriceBook]):
    list_display = ["name", "currency", "effective_from", "in_force"]
    list_filter = ["currency"]
    inlines = [PriceInline, PlanPriceInline]

    @admin.display(boolean=True)
    def in_force(self, obj: PriceBook) -> bool:
        return _in_force(obj)

    def has_change_permission(self, request: HttpRequest, obj: PriceBook | None = None) -> bool:
        return not _in_force(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: PriceBook | None = None) -> bool:
        return not _in_force(obj) and super().has_delete_permission(request, obj)


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


@admin.register(Budget)
class BudgetAdmin(AuditedAdmin[Budget]):
    list_display = ["account", "monthly_limit", "currency", "alert_percents", "hard_cap"]
    list_filter = ["hard_cap", "currency"]
    search_fields = ["account__name"]


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


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
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


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
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
class MarginAdmin(ReadOnlyAdmin):
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
    ]
    list_filter = ["grain", "dimension"]
    date_hierarchy = "bucket"


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = ["account", "period_start", "percent", "spent", "created_at"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "received_at"]
    list_filter = ["type"]


@admin.register(InvoiceNumber)
class InvoiceNumberAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "last"]


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin):
    list_display = ["job", "scope", "watermark", "finished_at"]
