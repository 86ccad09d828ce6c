"""Accounts with an API key, and the models the session's fleet serves (tests/conftest.py)."""

import uuid
from dataclasses import dataclass

from customers.models import Account, LimitOverride
from customers.services import account_create, api_key_issue

# The public model the session's simulated backend serves, and the name it knows it by.
MODEL = "llama-3.1-8b"
UPSTREAM_MODEL = "llama-3.1-8b-instruct"


@dataclass
class Tenant:
    account: Account
    key: str


def tenant_create(tier: str = "premium") -> Tenant:
    account = account_create(name=f"acct-{uuid.uuid4().hex[:8]}", tier_slug=tier)
    return Tenant(account=account, key=api_key_issue(account=account).plaintext)


def tenant_unlimited(**limits: int) -> Tenant:
    """A premium tenant whose rates and quotas are out of the way (and `limits` as given)."""
    tenant = tenant_create("premium")
    big = 10**9
    LimitOverride.objects.create(
        account=tenant.account,
        requests_per_minute=big,
        tokens_per_minute=big,
        tokens_per_day=big,
        tokens_per_month=big,
        **limits,
    )
    return tenant
