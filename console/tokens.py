"""Staff API tokens: `tfs_<token_id>_<secret>`, stored as their public id and SHA-256.

The same format as API keys with another prefix (customers/keys.py): 256 random bits of secret
make a fast hash as safe as a slow one, and the id finds the row without touching the secret.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.services import AnyRequest, audit_record, object_type, object_update, snapshot
from console.models import Scope, StaffToken, scopes_read_only
from customers.keys import SecretFormat

STAFF_TOKEN = SecretFormat("tfs_")


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
    new = STAFF_TOKEN.generate()
    with transaction.atomic():
        token = StaffToken.objects.create(
            user=user,
            name=name,
            token_id=new.key_id,
            secret_hash=new.secret_hash,
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
    return IssuedToken(token=token, plaintext=new.plaintext)


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
