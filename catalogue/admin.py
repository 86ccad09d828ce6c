"""The console's pages for price books, their prices and plans: editable until in force."""

from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from audit.admin_base import AuditedAdmin
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


class PlanPriceInline(_BookItemInline):
    model = PlanPrice


class PriceBookForm(forms.ModelForm[PriceBook]):
    class Meta:
        model = PriceBook
        fields = ["name", "currency", "effective_from"]

    def clean_effective_from(self) -> datetime:
        """A book not yet in force only moves later (the database refuses the rest too): moved
        into the past it would be in force at once, over usage already rated by another book."""
        start: datetime = self.cleaned_data["effective_from"]
        if self.instance.pk is not None and start <= timezone.now():
            raise forms.ValidationError(
                "A book not yet in force can only move to a later start; "
                "to change prices from an earlier time, create a new book."
            )
        return start


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
