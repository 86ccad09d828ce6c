"""Audit logging for what staff change in the console's forms (who, when, what, before, after).

The console's actions (suspend, revoke, rotate, enable, finalise, ...) call each app's audited
services (customers, fleet, catalogue, billing.closing); this covers the plain add, change and
delete forms, inlines included. The admin runs each form in a transaction, so an entry commits
with its change.
"""

from typing import Any, TypeVar

from django.contrib import admin
from django.db.models import Model
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest

from audit.services import audit_record, object_type, snapshot

M = TypeVar("M", bound=Model)


def _record(
    request: HttpRequest,
    action: str,
    obj: Model,
    obj_id: object,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    audit_record(
        actor=request.user,
        action=action,
        obj_type=object_type(obj),
        obj_id=obj_id,
        before=before,
        after=after,
        request=request,
    )


class AuditedAdmin(admin.ModelAdmin[M]):
    """A ModelAdmin whose saves and deletes (forms, inlines, bulk delete) are audited."""

    def save_model(self, request: HttpRequest, obj: M, form: ModelForm[M], change: bool) -> None:
        before = None
        if change and obj.pk is not None:
            before = snapshot(type(obj)._default_manager.get(pk=obj.pk))
        super().save_model(request, obj, form, change)
        _record(request, "update" if change else "create", obj, obj.pk, before, snapshot(obj))

    def delete_model(self, request: HttpRequest, obj: M) -> None:
        before, pk = snapshot(obj), obj.pk
        super().delete_model(request, obj)
        _record(request, "delete", obj, pk, before, None)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for obj in queryset:
            self.delete_model(request, obj)

    def save_formset(
        self,
        request: HttpRequest,
        form: Any,
        formset: BaseInlineFormSet[Any, Any, Any],
        change: bool,
    ) -> None:
        befores = {
            inline.instance.pk: snapshot(
                type(inline.instance)._default_manager.get(pk=inline.instance.pk)
            )
            for inline in formset.forms
            if inline.instance.pk is not None
        }
        deleting = [f.instance.pk for f in formset.deleted_forms if f.instance.pk is not None]
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            _record(request, "create", obj, obj.pk, None, snapshot(obj))
        for obj, _ in formset.changed_objects:
            _record(request, "update", obj, obj.pk, befores.get(obj.pk), snapshot(obj))
        for obj, pk in zip(formset.deleted_objects, deleting, strict=True):
            _record(request, "delete", obj, pk, befores.get(pk), None)


class ReadOnlyAdmin(admin.ModelAdmin[M]):
    """Pages for what only the system writes (ledgers, telemetry, the audit log): staff
    search, filter and read them, and nobody adds, edits or deletes a row here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
