"""Staff API tokens: `tfs_<token_id>_<secret>`, stored as their public id and SHA-256.

The same construction as API keys (gateway/keys.py): 256 random bits of secret make a fast
hash as safe as a slow one, and the id finds the row without touching the secret.
"""

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.services import AnyRequest, audit_record, object_type, object_update, snapshot
from console.models import Scope, StaffToken, scopes_read_only
from customers.keys import key_hash

STAFF_PREFIX = "tfs_"
_ID_LENGTH = 12
_LENGTH = len(STAFF_PREFIX) + _ID_LENGTH + 1 + 43


@dataclass(frozen=True)
class IssuedToken:
    token: StaffToken
    # Shown once to whoever issued it; not stored anywhere.
    plaintext: str


def staff_token_issue(
    *,
    actor: object,
    user: User,
    name: str = "",
    expires_at: datetime | None = None,
    scopes: Iterable[str] | None = None,
) -> IssuedToken:
    """A new token for `user`; read-only unless `scopes` says otherwise."""
    token_id = secrets.token_hex(_ID_LENGTH // 2)
    plaintext = f"{STAFF_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        token = StaffToken.objects.create(
            user=user,
            name=name,
            token_id=token_id,
            secret_hash=key_hash(plaintext),
            expires_at=expires_at,
            scopes=scopes_read_only() if scopes is None else scopes_clean(scopes),
        )
        audit_record(
            actor=actor,
            action="issue",
            obj_type=object_type(token),
            obj_id=token.pk,
            before=None,
            after=snapshot(token),
        )
    return IssuedToken(token=token, plaintext=plaintext)


def scopes_clean(scopes: Iterable[str]) -> list[str]:
    """Known scopes, each once, in the order Scope lists them; an unknown one is an error."""
    wanted = set(scopes)
    unknown = wanted - set(Scope.values)
    if unknown:
        raise ValueError(f"Unknown scope(s): {', '.join(sorted(unknown))}.")
    return [scope for scope in Scope.values if scope in wanted]


def staff_token_scopes_set(
    *, actor: object, token: StaffToken, scopes: Iterable[str], request: AnyRequest | None = None
) -> StaffToken:
    """Change what a token may do; the change is audited like any other."""
    return object_update(
        actor=actor, instance=token, data={"scopes": scopes_clean(scopes)}, request=request
    )


def staff_token_revoke(
    *, actor: object, token: StaffToken, request: AnyRequest | None = None
) -> StaffToken:
    """Stop a token working at once; revoking a revoked token changes nothing."""
    if token.revoked_at is not None:
        return token
    return object_update(
        actor=actor,
        instance=token,
        data={"revoked_at": timezone.now()},
        request=request,
        action="revoke",
    )


def staff_token_id_parse(plaintext: str) -> str | None:
    """The public id of a well-formed staff token, or None; looks at the format only."""
    if len(plaintext) != _LENGTH or not plaintext.startswith(STAFF_PREFIX):
        return None
    token_id = plaintext[len(STAFF_PREFIX) : len(STAFF_PREFIX) + _ID_LENGTH]
    if plaintext[len(STAFF_PREFIX) + _ID_LENGTH] != "_":
        return None
    try:
        int(token_id, 16)
    except ValueError:
        return None
    return token_id
