"""Members of an account: invitations, roles, removal and members' API tokens, audited.

The one way to write `Member`, `Invitation` and `MemberToken`: the customer portal, its
management API and the staff console call these. What a role may do is `may` (one table,
read by every surface). A member who leaves takes with them their sessions (the portal finds
no membership), their tokens and the API keys they made (revoked: gateways refuse them within
their key cache time).
"""

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from audit.services import AnyRequest, audit_change, snapshot
from customers.keys import SecretFormat, key_matches
from customers.models import Account, ApiKey, Invitation, Member, MemberToken, Project
from customers.webhooks import key_revoked_emit

INVITATION = SecretFormat("tfi_")
MEMBER_TOKEN = SecretFormat("tfm_")
INVITATION_DAYS = 7

Role = Member.Role

# What each role may do. Every surface asks `may(member, action)`; none spells roles out.
PERMISSIONS: dict[str, frozenset[str]] = {
    "usage.read": frozenset(Role.values),
    "projects.read": frozenset(Role.values),
    "keys.read": frozenset({Role.OWNER, Role.ADMIN, Role.DEVELOPER}),
    "keys.write": frozenset({Role.OWNER, Role.ADMIN, Role.DEVELOPER}),
    "projects.write": frozenset({Role.OWNER, Role.ADMIN}),
    "members.read": frozenset({Role.OWNER, Role.ADMIN}),
    "members.write": frozenset({Role.OWNER, Role.ADMIN}),
    "audit.read": frozenset({Role.OWNER, Role.ADMIN}),
    "invoices.read": frozenset({Role.OWNER, Role.BILLING}),
    "billing.write": frozenset({Role.OWNER, Role.BILLING}),
    # Webhook endpoints and their deliveries: their secrets are readable, so both are one.
    "webhooks.write": frozenset({Role.OWNER, Role.ADMIN}),
}


class MemberError(ValueError):
    """A change the rules refuse; its message is for the person who asked."""


def may(member: Member, action: str) -> bool:
    return member.role in PERMISSIONS[action]


def member_projects(member: Member) -> "Iterable[Project]":
    """The live projects a member works in: a developer's own, every one for other roles."""
    projects = Project.objects.filter(account_id=member.account_id, archived_at=None)
    if member.role == Role.DEVELOPER:
        projects = projects.filter(members=member)
    return projects


def member_reaches(member: Member, project: Project) -> bool:
    """Whether the member may act on this project's keys."""
    if project.account_id != member.account_id:
        return False
    if member.role != Role.DEVELOPER:
        return True
    return member.projects.filter(pk=project.pk).exists()


@dataclass(frozen=True)
class SentInvitation:
    invitation: Invitation
    # The secret of the link, for the email only; not stored.
    secret: str


def invitation_create(
    *,
    account: Account,
    email: str,
    role: str,
    projects: Iterable[Project] = (),
    actor: Any = None,
    request: AnyRequest | None = None,
) -> SentInvitation:
    """An invitation to join `account` as `role` (sending it is the caller's: the link needs
    the site's address)."""
    email = email.strip().lower()
    if role not in Role.values:
        raise MemberError(f"Unknown role {role!r}: one of {', '.join(Role.values)}.")
    if role == Role.OWNER and not _is_owner(actor, account.pk):
        raise MemberError("Only an owner can invite an owner.")
    projects = list(projects)
    if any(p.account_id != account.pk or p.archived_at is not None for p in projects):
        raise MemberError("Projects must be live projects of this account.")
    if Member.objects.filter(account=account, user__email__iexact=email).exists():
        raise MemberError(f"{email} is already a member of this account.")
    new = INVITATION.generate()
    with transaction.atomic():
        invitation = Invitation.objects.create(
            account=account,
            email=email,
            role=role,
            token_id=new.key_id,
            secret_hash=new.secret_hash,
            invited_by=_actor_name(actor),
            expires_at=timezone.now() + dt.timedelta(days=INVITATION_DAYS),
        )
        invitation.projects.set(projects)
        audit_change(actor, "invite", invitation, None, snapshot(invitation), request)
    return SentInvitation(invitation=invitation, secret=new.plaintext)


def invitation_find(secret: str) -> Invitation | None:
    """The open invitation this link's secret names, or None (unknown, used, revoked,
    expired)."""
    token_id = INVITATION.id_parse(secret)
    if token_id is None:
        return None
    invitation = Invitation.objects.select_related("account").filter(token_id=token_id).first()
    if invitation is None or not key_matches(secret, invitation.secret_hash):
        return None
    if invitation.accepted_at or invitation.revoked_at or invitation.expires_at <= timezone.now():
        return None
    return invitation


def invitation_accept(*, secret: str, user: Any, request: AnyRequest | None = None) -> Member:
    """Turn the invitation into a membership for `user` (signed up or signed in with the
    invited address)."""
    with transaction.atomic():
        invitation = invitation_find(secret)
        if invitation is None:
            raise MemberError("This invitation is not valid any more: ask for a new one.")
        invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if invitation.accepted_at is not None:
            raise MemberError("This invitation has been used already.")
        if (user.email or "").lower() != invitation.email:
            raise MemberError(f"This invitation is for {invitation.email}.")
        if Member.objects.filter(account_id=invitation.account_id, user=user).exists():
            raise MemberError("You are a member of this account already.")
        before = snapshot(invitation)
        invitation.accepted_at = timezone.now()
        invitation.save(update_fields=["accepted_at"])
        audit_change(user, "accept", invitation, before, snapshot(invitation), request)
        member = Member.objects.create(
            account_id=invitation.account_id, user=user, role=invitation.role
        )
        member.projects.set(invitation.projects.all())
        audit_change(user, "create", member, None, member_snapshot(member), request)
    return member


def invitation_revoke(
    *, invitation: Invitation, actor: Any = None, request: AnyRequest | None = None
) -> Invitation:
    with transaction.atomic():
        locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if locked.accepted_at is None and locked.revoked_at is None:
            before = snapshot(locked)
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked_at"])
            audit_change(actor, "revoke", locked, before, snapshot(locked), request)
    return locked


def member_snapshot(member: Member) -> dict[str, Any]:
    data = snapshot(member)
    assert data is not None
    return {
        **data,
        "email": member.user.email,
        "projects": sorted(member.projects.values_list("pk", flat=True)),
    }


def owner_add(
    *, account: Account, email: str, actor: Any = None, request: AnyRequest | None = None
) -> SentInvitation:
    """Staff's first step for a new customer: invite its owner."""
    return invitation_create(
        account=account, email=email, role=Role.OWNER, actor=actor, request=request
    )


def member_update(
    *,
    member: Member,
    role: str | None = None,
    projects: Iterable[Project] | None = None,
    actor: Any = None,
    request: AnyRequest | None = None,
) -> Member:
    """Change a member's role or (developers') projects. An account keeps at least one owner;
    only an owner makes or unmakes owners."""
    with transaction.atomic():
        locked = Member.objects.select_for_update().select_related("user").get(pk=member.pk)
        before = member_snapshot(locked)
        if role is not None and role != locked.role:
            if role not in Role.values:
                raise MemberError(f"Unknown role {role!r}: one of {', '.join(Role.values)}.")
            if Role.OWNER in (role, locked.role) and not _is_owner(actor, locked.account_id):
                raise MemberError("Only an owner can make or unmake an owner.")
            if locked.role == Role.OWNER:
                _keep_an_owner(locked)
            locked.role = role
            locked.save(update_fields=["role"])
        if projects is not None:
            projects = list(projects)
            if any(p.account_id != locked.account_id for p in projects):
                raise MemberError("Projects must be this account's.")
            locked.projects.set(projects)
        audit_change(actor, "update", locked, before, member_snapshot(locked), request)
    return locked


def member_remove(*, member: Member, actor: Any = None, request: AnyRequest | None = None) -> None:
    """Remove a member: their tokens and the keys they made are revoked, their sessions end."""
    with transaction.atomic():
        locked = Member.objects.select_for_update().select_related("user").get(pk=member.pk)
        if locked.role == Role.OWNER:
            if not _is_owner(actor, locked.account_id):
                raise MemberError("Only an owner can remove an owner.")
            _keep_an_owner(locked)
        before = member_snapshot(locked)
        now = timezone.now()
        for key in ApiKey.objects.select_for_update().filter(created_by=locked, revoked_at=None):
            key_before = snapshot(key)
            key.revoked_at = now
            key.save(update_fields=["revoked_at"])
            audit_change(actor, "revoke", key, key_before, snapshot(key), request)
            key_revoked_emit(key, reason="member_removed")
        MemberToken.objects.filter(member=locked, revoked_at=None).update(revoked_at=now)
        locked.delete()
        audit_change(
            actor, "remove", locked, before, None, request, account_id=before["account_id"]
        )


def _keep_an_owner(member: Member) -> None:
    others = Member.objects.filter(account_id=member.account_id, role=Role.OWNER).exclude(
        pk=member.pk
    )
    if not others.exists():
        raise MemberError("An account needs an owner: make someone else owner first.")


def _is_owner(actor: Any, account_id: int) -> bool:
    """Staff (no membership needed) or an owner of the account."""
    if isinstance(actor, str) or actor is None:
        return True  # a command or the system
    if getattr(actor, "is_staff", False):
        return True
    return Member.objects.filter(account_id=account_id, user=actor, role=Role.OWNER).exists()


def _actor_name(actor: Any) -> str:
    if actor is None or isinstance(actor, str):
        return actor or "system"
    return str(actor.get_username()) if hasattr(actor, "get_username") else str(actor)


@dataclass(frozen=True)
class IssuedMemberToken:
    token: MemberToken
    # Shown once; not stored.
    plaintext: str


def member_token_issue(
    *,
    member: Member,
    name: str = "",
    expires_at: datetime | None = None,
    actor: Any = None,
    request: AnyRequest | None = None,
) -> IssuedMemberToken:
    new = MEMBER_TOKEN.generate()
    with transaction.atomic():
        token = MemberToken.objects.create(
            member=member,
            name=name,
            token_id=new.key_id,
            secret_hash=new.secret_hash,
            expires_at=expires_at,
        )
        audit_change(
            actor, "issue", token, None, snapshot(token), request, account_id=member.account_id
        )
    return IssuedMemberToken(token=token, plaintext=new.plaintext)


def member_token_revoke(
    *, token: MemberToken, actor: Any = None, request: AnyRequest | None = None
) -> MemberToken:
    with transaction.atomic():
        locked = MemberToken.objects.select_for_update().select_related("member").get(pk=token.pk)
        if locked.revoked_at is None:
            before = snapshot(locked)
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked_at"])
            audit_change(
                actor,
                "revoke",
                locked,
                before,
                snapshot(locked),
                request,
                account_id=locked.member.account_id,
            )
    return locked


def member_user_create(*, email: str, password: str) -> Any:
    """A portal user (never staff) whose username is their email address."""
    User = get_user_model()
    email = email.strip().lower()
    return User.objects.create_user(username=email, email=email, password=password)
