"""Every change to tiers, accounts, their limits, API keys and budgets, audited.

The one way to write these tables: the console, the management API, the self-serve API and
the `manage.py` commands all call these functions, each of which records its audit entry in
the same transaction as the change (`actor` None is the system, or the command running:
audit.commands.AuditedCommand). Gateways apply a change within GATEWAY_KEY_CACHE_SECONDS.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.services import (
    AnyRequest,
    audit_change,
    object_delete,
    snapshot,
)
from customers.keys import key_generate
from customers.models import (
    LIMIT_FIELDS,
    Account,
    ApiKey,
    LimitOverride,
    Member,
    Project,
    Tier,
)
from customers.webhooks import key_revoked_emit

# The three tiers the product sells, as created on a fresh install. Staff edit the rows after.
DEFAULT_TIERS = (
    {
        "slug": "premium",
        "name": "Premium",
        "priority": 0,
        "requests_per_minute": 6000,
        "tokens_per_minute": 2_000_000,
        "max_concurrent_requests": 256,
        "max_tokens_per_request": 32768,
        "queue_timeout_seconds": 60.0,
    },
    {
        "slug": "interactive",
        "name": "Interactive",
        "priority": 1,
        "requests_per_minute": 600,
        "tokens_per_minute": 400_000,
        "max_concurrent_requests": 64,
        "max_tokens_per_request": 8192,
        "queue_timeout_seconds": 10.0,
    },
    {
        "slug": "free",
        "name": "Free",
        "priority": 2,
        "requests_per_minute": 20,
        "tokens_per_minute": 20_000,
        "tokens_per_day": 200_000,
        "max_concurrent_requests": 4,
        "max_tokens_per_request": 1024,
        "queue_timeout_seconds": 2.0,
        "queue_depth": 100,
        "when_redis_down": "open",
    },
)


def tiers_ensure_defaults(*, actor: object = None) -> list[Tier]:
    """Create the default tiers that do not exist yet; never overwrites staff edits."""
    tiers = []
    with transaction.atomic():
        for spec in DEFAULT_TIERS:
            tier, created = Tier.objects.get_or_create(slug=spec["slug"], defaults=spec)
            if created:
                audit_change(actor, "create", tier, None, snapshot(tier))
            tiers.append(tier)
    return tiers


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
    *, name: str, tier_slug: str, actor: object = None, request: AnyRequest | None = None
) -> Account:
    """A new account on the tier `tier_slug`."""
    tier = Tier.objects.get(slug=tier_slug)
    return account_open(actor=actor, data={"name": name, "tier": tier}, request=request)


def account_open(
    *,
    actor: object,
    data: Mapping[str, Any],
    limits: Mapping[str, Any] | None = None,
    request: AnyRequest | None = None,
) -> Account:
    """A new account from its fields (`tier` a Tier) and, optionally, its limit override."""
    with transaction.atomic():
        account = Account.objects.create(**data)
        if limits is not None:
            LimitOverride.objects.create(account=account, **limits)
        audit_change(actor, "create", account, None, account_snapshot(account), request)
        project = Project.objects.create(account=account, name=DEFAULT_PROJECT, is_default=True)
        audit_change(actor, "create", project, None, snapshot(project), request)
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
        audit_change(actor, "update", account, before, account_snapshot(account), request)
    return account


def account_delete(*, actor: object, account: Account, request: AnyRequest | None = None) -> None:
    """Delete an account and its keys; refused (ProtectedError) once it has invoices."""
    object_delete(actor=actor, instance=account, request=request, before=account_snapshot(account))


def account_status_set(
    *, account: Account, status: str, actor: object = None, request: AnyRequest | None = None
) -> Account:
    """Suspend or reactivate: `status` is "suspended" or "active"."""
    if status not in Account.Status.values:
        raise ValueError(f"unknown account status {status!r}")
    with transaction.atomic():
        locked = Account.objects.select_for_update().get(pk=account.pk)
        before = account_snapshot(locked)
        locked.status = status
        locked.save(update_fields=["status"])
        action = "suspend" if status == Account.Status.SUSPENDED else "activate"
        audit_change(actor, action, locked, before, account_snapshot(locked), request)
    account.status = status
    return locked


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    # Shown once to the caller; not stored anywhere.
    plaintext: str


def api_key_issue(
    *,
    account: Account,
    name: str = "",
    expires_at: datetime | None = None,
    project: Project | None = None,
    actor: object = None,
    request: AnyRequest | None = None,
    created_by: Member | None = None,
) -> IssuedKey:
    """A new key in `project` (the account's default project if None); its plaintext is in
    the result only, for the caller to show once. `created_by` is the member who asked (the
    portal, the customer API): their keys are revoked when they leave."""
    if project is None:
        project = project_default(account)
    elif project.account_id != account.pk:
        raise ValueError("a key's project must be one of its account's")
    elif project.archived_at is not None:
        raise ValueError("an archived project takes no new keys")
    new = key_generate()
    with transaction.atomic():
        api_key = ApiKey.objects.create(
            account=account,
            project=project,
            created_by=created_by,
            name=name,
            key_id=new.key_id,
            secret_hash=new.secret_hash,
            expires_at=expires_at,
        )
        audit_change(actor, "issue", api_key, None, snapshot(api_key), request)
    return IssuedKey(api_key=api_key, plaintext=new.plaintext)


def api_key_revoke(
    *, key_id: str, actor: object = None, request: AnyRequest | None = None
) -> ApiKey:
    """Revoke a key (a revoked key stays revoked from the first time)."""
    with transaction.atomic():
        api_key = ApiKey.objects.select_for_update().get(key_id=key_id)
        before = snapshot(api_key)
        if api_key.revoked_at is None:
            api_key.revoked_at = timezone.now()
            api_key.save(update_fields=["revoked_at"])
            key_revoked_emit(api_key, reason="revoked")
        audit_change(actor, "revoke", api_key, before, snapshot(api_key), request)
    return api_key


def api_key_rotate(
    *, key_id: str, actor: object = None, request: AnyRequest | None = None
) -> IssuedKey:
    """A new key for the same account and name; the old one is revoked at once.

    Two entries: the old key's revocation (action "rotate") and the new key's issue.
    """
    with transaction.atomic():
        old = ApiKey.objects.select_for_update().get(key_id=key_id)
        before = snapshot(old)
        if old.revoked_at is None:
            old.revoked_at = timezone.now()
            old.save(update_fields=["revoked_at"])
            key_revoked_emit(old, reason="rotated")
        audit_change(actor, "rotate", old, before, snapshot(old), request)
        return api_key_issue(
            account=old.account,
            project=old.project,
            name=old.name,
            expires_at=old.expires_at,
            actor=actor,
            request=request,
        )


DEFAULT_PROJECT = "Default"


def project_default(account: Account) -> Project:
    """The account's default project (every account has one: account_open, migration 0002)."""
    return Project.objects.get(account=account, is_default=True)


def project_limits_check(account: Account, limits: Mapping[str, Any]) -> dict[str, str]:
    """What is wrong with a project's limits: each must be within the account's own
    (its override, else its tier's), which the gateway enforces as well."""
    override = LimitOverride.objects.filter(account=account).first()
    errors = {}
    for name in LIMIT_FIELDS:
        value = limits.get(name)
        if value is None:
            continue
        ceiling = getattr(override, name, None) if override is not None else None
        if ceiling is None:
            ceiling = getattr(account.tier, name)
        if ceiling is not None and value > ceiling:
            errors[name] = f"At most {ceiling:,}: the account's own limit."
    return errors


def project_create(
    *,
    account: Account,
    name: str,
    data: Mapping[str, Any] | None = None,
    actor: object = None,
    request: AnyRequest | None = None,
) -> Project:
    """A new project in `account`; `data` may set its limits and budget."""
    with transaction.atomic():
        project = Project.objects.create(account=account, name=name, **dict(data or {}))
        audit_change(actor, "create", project, None, snapshot(project), request)
    return project


def project_update(
    *,
    project: Project,
    data: Mapping[str, Any],
    actor: object = None,
    request: AnyRequest | None = None,
) -> Project:
    """Change a live project's name, limits or budget."""
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        if locked.archived_at is not None:
            raise ValueError("an archived project cannot be changed")
        before = snapshot(locked)
        for name, value in data.items():
            setattr(locked, name, value)
        locked.save()
        audit_change(actor, "update", locked, before, snapshot(locked), request)
    return locked


def project_archive(
    *, project: Project, actor: object = None, request: AnyRequest | None = None
) -> Project:
    """Archive a project and revoke its keys (gateways refuse them within their key cache
    time). The default project is never archived: keys issued without one go there."""
    if project.is_default:
        raise ValueError("the default project cannot be archived")
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        if locked.archived_at is not None:
            return locked
        before = snapshot(locked)
        now = timezone.now()
        locked.archived_at = now
        locked.save(update_fields=["archived_at"])
        audit_change(actor, "archive", locked, before, snapshot(locked), request)
        for key in ApiKey.objects.select_for_update().filter(project=locked, revoked_at=None):
            key_before = snapshot(key)
            key.revoked_at = now
            key.save(update_fields=["revoked_at"])
            audit_change(actor, "revoke", key, key_before, snapshot(key), request)
            key_revoked_emit(key, reason="project_archived")
    return locked
