"""The console's pages for price books, their prices and plans: editable until in force.

Tiers and models are chosen from lists and a new book that would take effect at once asks
first (catalogue/forms.py); a book's page links to a preview of what it would have charged
last month (the console's, by URL name: the figures are billing's).
"""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from audit.admin_base import AuditedAdmin
from catalogue.forms import PlanPriceForm, PriceBookForm, PriceForm
from catalogue.models import PlanPrice, Price, PriceBook


def _in_force(obj: PriceBook | None) -> bool:
    return obj is not None and obj.effective_from <= timezone.now()


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
    form = PriceForm


class PlanPriceInline(_BookItemInline):
    model = PlanPrice
    form = PlanPriceForm


@admin.register(PriceBook)
class PriceBookAdmin(AuditedAdmin[PriceBook]):
    form = PriceBookForm
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
