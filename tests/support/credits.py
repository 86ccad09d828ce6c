"""Prepaid accounts as billing makes them: billed from credit, funded by a grant that reaches
the gateway's balance through billing's own path (billing/credits.py: the ledger entry, then
the applied-set script on commit)."""

from decimal import Decimal

from billing.credits import credit_grant
from billing.models import CreditGrant
from customers.models import Account
from tests.support.tenants import Tenant, tenant_create


def prepaid_tenant(amount: Decimal | None, tier: str = "premium") -> Tenant:
    """A prepaid account with a key and, unless `amount` is None, a promotion grant of it."""
    tenant = tenant_create(tier)
    # No audited service switches an account's billing mode yet: set as a migration would.
    Account.objects.filter(pk=tenant.account.pk).update(billing_mode=Account.Billing.PREPAID)
    tenant.account.refresh_from_db()
    if amount is not None:
        credit_grant(
            account=tenant.account,
            amount=amount,
            source=CreditGrant.Source.PROMOTION,
            actor=None,
            memo="test funds",
        )
    return tenant
