"""Recording changes in the audit log (audit.models.AuditEntry): the one audited way to write.

Every service that changes an object records one entry in the same transaction as the
change, so the log holds exactly the changes that happened. Snapshots are the model's
concrete fields as JSON, secrets left out.

Who acted: a staff user, a key holder, or, for `manage.py` commands, the command and the OS
account that ran it ("command:<name> by <user>", `command_actor`); "system" for jobs.
"""

import getpass
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeAlias, TypeVar

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.http import HttpRequest
from rest_framework.request import Request

from audit.client_ip import client_address
from audit.models import AuditEntry

# Field names never copied into the log, whatever the model: hashes of keys and passwords
# are secrets too (a hash of a key is enough to look it up).
SECRET_FIELDS = frozenset({"secret_hash", "password", "key_hash", "token_hash", "bin_key"})

SYSTEM = "system"

# What a change arrives with: Django's request (admin) or DRF's (the API); only META is read.
AnyRequest: TypeAlias = HttpRequest | Request

# Who a change made with actor None is recorded as, while `acting_as` says (None: SYSTEM).
_acting: ContextVar[object] = ContextVar("audit_acting", default=None)


def command_actor(command: str) -> str:
    """How the log names a run of `manage.py <command>`: "command:<command> by <OS user>".

    A command has no signed-in user; the OS account that ran it is the one to ask.
    """
    return f"command:{command} by {_os_user()}"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment and no passwd entry
        return f"uid {os.getuid()}"


@contextmanager
def acting_as(actor: object) -> Iterator[None]:
    """Record `actor` for the changes made in the block by services called without an actor
    (e.g. by a command, through helpers that take none); an explicit actor still wins."""
    token = _acting.set(actor)
    try:
        yield
    finally:
        _acting.reset(token)


def snapshot(instance: models.Model | None) -> dict[str, Any] | None:
    """The instance's concrete fields as JSON-ready values (foreign keys as ids), no secrets."""
    if instance is None:
        return None
    data = {
        field.attname: field.value_from_object(instance)
        for field in instance._meta.concrete_fields
        if not _is_secret(field.name)
    }
    loaded: dict[str, Any] = json.loads(json.dumps(data, cls=DjangoJSONEncoder))
    return loaded


def _is_secret(name: str) -> bool:
    return name in SECRET_FIELDS or "secret" in name or "password" in name


def audit_record(
    *,
    actor: Any,
    action: str,
    obj_type: str,
    obj_id: object,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    request: AnyRequest | None = None,
    account_id: int | None = None,
) -> AuditEntry:
    """Append one entry. `actor` is a user, an ApiKey, a string such as "system", or None.

    Call it inside the transaction that makes the change.

    `obj_type` is "<app_label>.<model>" (see `object_type`); `before` and `after` are
    snapshots (see `snapshot`), None for a creation's before or a deletion's after.
    """
    user_id, name = _actor(actor)
    return AuditEntry.objects.create(
        account_id=account_id or _account_of(obj_type, obj_id, before, after),
        actor_user_id=user_id,
        actor=name,
        action=action,
        object_type=obj_type,
        object_id=str(obj_id),
        before=before,
        after=after,
        remote_addr=_remote_addr(request),
    )


def _account_of(
    obj_type: str, obj_id: object, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> int | None:
    """The account a change belongs to: the account itself, or what its snapshot names."""
    if obj_type == "customers.account":
        return int(str(obj_id))
    for state in (after, before):
        if state is not None and isinstance(account_id := state.get("account_id"), int):
            return account_id
    return None


def audit_change(
    actor: object,
    action: str,
    instance: models.Model,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    request: AnyRequest | None = None,
    account_id: int | None = None,
) -> AuditEntry:
    """Append one entry about `instance`, filed under its type and primary key (and under
    `account_id`, where its snapshot does not name its account)."""
    return audit_record(
        actor=actor,
        action=action,
        obj_type=object_type(instance),
        obj_id=instance.pk,
        before=before,
        after=after,
        request=request,
        account_id=account_id,
    )


def object_type(instance_or_model: models.Model | type[models.Model]) -> str:
    """The name an object's entries are filed under: "<app_label>.<model>"."""
    return instance_or_model._meta.label_lower


def _actor(actor: Any) -> tuple[int | None, str]:
    if actor is None:
        acting = _acting.get()
        return (None, SYSTEM) if acting is None else _actor(acting)
    if isinstance(actor, str):
        return None, actor
    if (key_id := getattr(actor, "key_id", None)) is not None:  # an API key (customers)
        return None, f"api-key:{key_id}"
    if getattr(actor, "is_authenticated", False):
        return int(actor.pk), str(actor.get_username())
    return None, "anonymous"


def _remote_addr(request: AnyRequest | None) -> str | None:
    """The client's address as sign-in lockouts see it (trusted proxies followed); None for
    a unix socket or a test client, which have none worth keeping."""
    return client_address(request) if request is not None else None


# Create, update and delete for objects with no rules beyond their fields' own: each runs in one
# transaction with its audit entry; updates lock the row first so the `before` snapshot is the
# state the change replaced.
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
    *,
    actor: object,
    instance: models.Model,
    request: AnyRequest | None = None,
    before: dict[str, Any] | None = None,
) -> None:
    """Delete, recording `before` (by default the instance's snapshot)."""
    with transaction.atomic():
        before = snapshot(instance) if before is None else before
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


@contextmanager
def rows_audited(*, actor: object, rows: models.QuerySet[Any]) -> Iterator[None]:
    """Audit what the block does to `rows`, for a writer that records nothing itself: one
    create, update or delete entry per row whose snapshot changed, in one transaction with
    the block. `rows` is read (and locked) before the block and again after it, so it must
    select the rows by something the block keeps, such as their names.
    """
    with transaction.atomic():
        before = {row.pk: snapshot(row) for row in rows.select_for_update()}
        yield
        after = {row.pk: snapshot(row) for row in rows.all()}
        for pk in sorted(before.keys() | after.keys()):
            old, new = before.get(pk), after.get(pk)
            if old == new:
                continue
            audit_record(
                actor=actor,
                action="create" if old is None else "delete" if new is None else "update",
                obj_type=object_type(rows.model),
                obj_id=pk,
                before=old,
                after=new,
            )
