"""Audited changes to accounts, their limits and keys, and backends.

The state changes themselves are gateway.services'; these add the audit entry in the same
transaction. Gateways apply them within GATEWAY_KEY_CACHE_SECONDS (keys, accounts) or a
backend-list refresh (backends).
"""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.db import transaction

from console.audit import AnyRequest, audit_record, object_type, snapshot
from gateway import services as gateway_services
from gateway.models import Account, ApiKey, Backend, LimitOverride


def account_snapshot(account: Account) -> dict[str, Any]:
    """The account's fields and its limit override (null when it has none)."""
    override = LimitOverride.objects.filter(account=account).first()
    data = snapshot(account)
    assert data is not None
    return {**data, "limits": _limits_snapshot(override)}


def _limits_snapshot(override: LimitOverride | None) -> dict[str, Any] | None:
    data = snapshot(override)
    if data is None:
        return None
    return {k: v for k, v in data.items() if k not in ("id", "account_id")}


def account_create(
    *,
    actor: object,
    data: Mapping[str, Any],
    limits: Mapping[str, Any] | None = None,
    request: AnyRequest | None = None,
) -> Account:
    with transaction.atomic():
        account = Account.objects.create(**data)
        if limits is not None:
            LimitOverride.objects.create(account=account, **limits)
        _record(actor, "create", account, None, account_snapshot(account), request)
    return account


_UNSET: Any = object()


def account_update(
    *,
    actor: object,
    account: Account,
    data: Mapping[str, Any],
    limits: Mapping[str, Any] | None = _UNSET,
    request: AnyRequest | None = None,
) -> Account:
    """Change fields; `limits` None removes the override, a mapping sets its fields."""
    with transaction.atomic():
        account = Account.objects.select_for_update().get(pk=account.pk)
        before = account_snapshot(account)
        for name, value in data.items():
            setattr(account, name, value)
        account.save()
        if limits is None:
            LimitOverride.objects.filter(account=account).delete()
        elif limits is not _UNSET:
            LimitOverride.objects.update_or_create(account=account, defaults=dict(limits))
        _record(actor, "update", account, before, account_snapshot(account), request)
    return account


def account_delete(*, actor: object, account: Account, request: AnyRequest | None = None) -> None:
    """Delete an account and its keys; refused (ProtectedError) once it has invoices."""
    with transaction.atomic():
        before = account_snapshot(account)
        pk = account.pk
        account.delete()
        audit_record(
            actor=actor,
            action="delete",
            obj_type=object_type(Account),
            obj_id=pk,
            before=before,
            after=None,
            request=request,
        )


def account_status_change(
    *, actor: object, account: Account, status: str, request: AnyRequest | None = None
) -> Account:
    """Suspend or reactivate: `status` is "suspended" or "active"."""
    with transaction.atomic():
        account = Account.objects.select_for_update().get(pk=account.pk)
        before = account_snapshot(account)
        gateway_services.account_status_set(account=account, status=status)
        action = "suspend" if status == Account.Status.SUSPENDED else "activate"
        _record(actor, action, account, before, account_snapshot(account), request)
    return account


def api_key_issue(
    *,
    actor: object,
    account: Account,
    name: str = "",
    expires_at: datetime | None = None,
    request: AnyRequest | None = None,
) -> gateway_services.IssuedKey:
    """A new key; its plaintext is in the result only, for the caller to show once."""
    with transaction.atomic():
        issued = gateway_services.api_key_issue(account=account, name=name, expires_at=expires_at)
        _record(actor, "issue", issued.api_key, None, snapshot(issued.api_key), request)
    return issued


def api_key_revoke(*, actor: object, api_key: ApiKey, request: AnyRequest | None = None) -> ApiKey:
    with transaction.atomic():
        before = snapshot(ApiKey.objects.select_for_update().get(pk=api_key.pk))
        revoked = gateway_services.api_key_revoke(key_id=api_key.key_id)
        _record(actor, "revoke", revoked, before, snapshot(revoked), request)
    return revoked


def api_key_rotate(
    *, actor: object, api_key: ApiKey, request: AnyRequest | None = None
) -> gateway_services.IssuedKey:
    """A new key for the same account and name; the old one is revoked at once.

    Two entries: the old key's revocation (action "rotate") and the new key's issue.
    """
    with transaction.atomic():
        before = snapshot(ApiKey.objects.select_for_update().get(pk=api_key.pk))
        issued = gateway_services.api_key_rotate(key_id=api_key.key_id)
        old = ApiKey.objects.get(pk=api_key.pk)
        _record(actor, "rotate", old, before, snapshot(old), request)
        _record(actor, "issue", issued.api_key, None, snapshot(issued.api_key), request)
    return issued


def backend_enabled_change(
    *, actor: object, backend: Backend, enabled: bool, request: AnyRequest | None = None
) -> Backend:
    with transaction.atomic():
        backend = Backend.objects.select_for_update().get(pk=backend.pk)
        before = snapshot(backend)
        gateway_services.backend_enabled_set(backend=backend, enabled=enabled)
        action = "enable" if enabled else "disable"
        _record(actor, action, backend, before, snapshot(backend), request)
    return backend


def _record(
    actor: object,
    action: str,
    instance: Account | ApiKey | Backend,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    request: AnyRequest | None,
) -> None:
    audit_record(
        actor=actor,
        action=action,
        obj_type=object_type(instance),
        obj_id=instance.pk,
        before=before,
        after=after,
        request=request,
    )
