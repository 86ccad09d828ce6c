"""Factories for the customer management API's tests: an account's members, each with a
member token, made the way customers get them (an invitation accepted, a token issued)."""

import uuid
from dataclasses import dataclass, field

from rest_framework.test import APIClient

from customers.members import (
    invitation_accept,
    invitation_create,
    member_token_issue,
    member_user_create,
)
from customers.models import Member, Project
from customers.services import project_create
from tests.console.api_support import Tenant, tenant_create, token_client


@dataclass
class Org:
    """An account (the tenant of api_support, with its key and invoices), a second project,
    and one member per role, each with a token."""

    tenant: Tenant
    project: Project
    members: dict[str, Member] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def account(self) -> object:
        return self.tenant.account

    def client(self, role: str = "owner") -> APIClient:
        return token_client(self.tokens[role])


def member_add(tenant: Tenant, role: str, projects: list[Project] | None = None) -> Member:
    """A member in `role`, signed up through an invitation."""
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    sent = invitation_create(
        account=tenant.account, email=email, role=role, projects=projects or [], actor="test"
    )
    user = member_user_create(email=email, password=uuid.uuid4().hex)
    return invitation_accept(secret=sent.secret, user=user)


def org_create(tier: str = "premium") -> Org:
    tenant = tenant_create(tier)
    project = project_create(account=tenant.account, name="Research", actor="test")
    org = Org(tenant=tenant, project=project)
    for role in ("owner", "admin", "developer", "billing"):
        member = member_add(tenant, role, [project] if role == "developer" else None)
        org.members[role] = member
        org.tokens[role] = member_token_issue(member=member, actor="test").plaintext
    return org
