"""Staff's prepaid credit pages: grants listed with what is left and the account's balance,
a grant, a refund and a correction made through the services and audited, nothing edited."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client

from audit.models import AuditEntry
from billing.models import CreditEntry, CreditGrant
from billing.selectors import credit_balance
from tests.billing.factories import account_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("finance", password="not-used"))
    return client


def test_staff_grant_refund_and_correct_credit_audited(staff: Client) -> None:
    account = account_make()
    page = staff.post(
        "/admin/billing/creditgrant/add/",
        {"account": account.pk, "amount": "25.00", "source": "goodwill", "priority": "0"},
    )
    assert page.status_code == 302, page.content.decode()[:2000]
    grant = CreditGrant.objects.get(account=account)
    assert (
        staff.post(
            f"/admin/billing/creditgrant/{grant.pk}/refund/", {"amount": "5", "memo": "paid back"}
        ).status_code
        == 302
    )
    refused = staff.post(
        f"/admin/billing/creditgrant/{grant.pk}/correct/", {"amount": "-30", "memo": "typo"}
    )
    assert "more than is left of the grant" in refused.content.decode()
    listing = staff.get("/admin/billing/creditgrant/").content.decode()
    assert "$20.00" in listing and "$25.00" in listing
    assert credit_balance(account) == Decimal(20)
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"credit_grant", "credit_refund"} <= actions
    assert (
        staff.get(
            f"/admin/billing/creditentry/{CreditEntry.objects.first().pk}/delete/"
        ).status_code
        == 403
    )
