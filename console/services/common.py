"""Audited create, update and delete for objects with no rules beyond their fields' own.

Each runs in one transaction with its audit entry; updates lock the row first so the
`before` snapshot is the state the change replaced.
"""

from collections.abc import Mapping
from typing import Any, TypeVar

from django.db import models, transaction

from console.audit import AnyRequest, audit_record, object_type, snapshot

M = TypeVar("M", bound=models.Model)


def object_create(
    *, actor: object, model: type[M], data: Mapping[str, Any], request: AnyRequest | None = None
) -> M:
    with transaction.atomic():
        instance: M = model._default_manager.create(**data)
        audit_record(
            actor=actor,
            action="create",
            obj_type=object_type(instance),
            obj_id=instance.pk,
            before=None,
            after=snapshot(instance),
            request=request,
        )
    return instance


def object_update(
    *,
    actor: object,
    instance: M,
    data: Mapping[str, Any],
    request: AnyRequest | None = None,
    action: str = "update",
) -> M:
    """Set `data` on the row and record it as `action` (a verb such as "revoke" where the
    change has a name of its own)."""
    with transaction.atomic():
        locked = type(instance)._default_manager.select_for_update().get(pk=instance.pk)
        before = snapshot(locked)
        for name, value in data.items():
            setattr(locked, name, value)
        locked.save()
        audit_record(
            actor=actor,
            action=action,
            obj_type=object_type(locked),
            obj_id=locked.pk,
            before=before,
            after=snapshot(locked),
            request=request,
        )
    return locked


def object_delete(
    *, actor: object, instance: models.Model, request: AnyRequest | None = None
) -> None:
    with transaction.atomic():
        before = snapshot(instance)
        pk = instance.pk
        instance.delete()
        audit_record(
            actor=actor,
            action="delete",
            obj_type=object_type(instance),
            obj_id=pk,
            before=before,
            after=None,
            request=request,
        )
