"""Accounts with members, made as the portal makes them: invited, then accepted."""

import uuid
from collections.abc import Iterable
from typing import Any

from django.test import Client

from customers.members import invitation_accept, invitation_create, member_user_create
from customers.models import Account, Member, Project
from customers.services import account_create, tiers_ensure_defaults

PASSWORD = "correct horse battery staple"


def email_new() -> str:
    return f"m-{uuid.uuid4().hex[:10]}@example.com"


def member_add(
    account: Account, role: str, projects: Iterable[Project] = (), user: Any = None
) -> Member:
    """A user (a new one unless given) who accepted an invitation to `account` as `role`."""
    email = user.email if user is not None else email_new()
    sent = invitation_create(account=account, email=email, role=role, projects=projects)
    if user is None:
        user = member_user_create(email=email, password=PASSWORD)
    return invitation_accept(secret=sent.secret, user=user)


def account_with_owner(tier: str = "premium") -> Member:
    """A new account and its owner."""
    tiers_ensure_defaults()
    account = account_create(name=f"org-{uuid.uuid4().hex[:8]}", tier_slug=tier)
    return member_add(account, Member.Role.OWNER)


def client_of(member: Member) -> Client:
    """A test client signed in to the portal as `member`, working in its account."""
    client = Client()
    client.force_login(member.user)
    session = client.session
    session["portal_account_id"] = member.account_id
    session.save()
    return client
