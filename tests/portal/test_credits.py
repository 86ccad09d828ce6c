"""The portal's credits page: the balance, grants and movements, buying credits (off to
Stripe's Checkout page), the automatic top-up, and who may do what."""

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from audit.models import AuditEntry
from billing.checkout import topup_settings
from billing.credits import credit_grant
from billing.models import CreditGrant
from customers.models import Account, Member
from tests.billing.stripe_server import start_stripe
from tests.support.members import account_with_owner, client_of, member_add
from tests.support.servers import Server

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[Server]:
    server = start_stripe()
    yield server
    server.stop()


@pytest.fixture
def owner() -> Member:
    member = account_with_owner()
    Account.objects.filter(pk=member.account_id).update(billing_mode=Account.Billing.PREPAID)
    member.account.refresh_from_db()
    return member


def granted(member: Member, amount: str, reference: str = "") -> CreditGrant:
    return credit_grant(
        account=member.account,
        amount=Decimal(amount),
        source="promotion",
        reference=reference,
        actor="staff",
        memo="welcome credit",
    )


def attempt_form(client: Any) -> dict[str, str]:
    page = client.get("/portal/credits/")
    return {"attempt": str(page.context["buy_form"].initial["attempt"])}


def test_the_owner_sees_the_balance_and_each_grant(
    owner: Member, django_capture_on_commit_callbacks: Any
) -> None:
    # The balance shown is the gateway's counter, which the grant reaches once committed.
    with django_capture_on_commit_callbacks(execute=True):
        granted(owner, "12.5")

    page = client_of(owner).get("/portal/credits/")

    assert page.status_code == 200
    body = page.content.decode()
    assert '<span id="balance-total">$12.50</span>' in body
    assert "welcome credit" in body
    assert 'id="buy-form"' in body and 'id="topup-form"' in body


@pytest.mark.parametrize(
    ("role", "status"),
    [("billing", 200), ("admin", 403), ("developer", 403)],
)
def test_only_owners_and_billing_members_see_credits(owner: Member, role: str, status: int) -> None:
    member = member_add(owner.account, role)
    client = client_of(member)

    assert client.get("/portal/credits/").status_code == status
    buy = client.post("/portal/credits/buy/", {"amount": "10", **attempt_form(client_of(owner))})
    topup = client.post("/portal/credits/auto-topup/", {"enabled": ""})
    assert (buy.status_code, topup.status_code) == (status, 302 if status == 200 else 403)


def test_buying_sends_the_member_to_stripes_checkout_page(
    owner: Member, stripe_server: Server, settings: Any
) -> None:
    settings.STRIPE = {"API_KEY": "sk_test_tf", "WEBHOOK_SECRET": "", "API_BASE": stripe_server.url}
    client = client_of(owner)

    reply = client.post("/portal/credits/buy/", {"amount": "25", **attempt_form(client)})

    assert reply.status_code == 302
    assert reply["Location"].startswith(f"{stripe_server.url}/c/pay/cs_test_")


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        ("2", "Buy between 5 and 10,000 USD of credits at a time."),
        ("20000", "Buy between 5 and 10,000 USD of credits at a time."),
        ("abc", "Enter a number."),
    ],
)
def test_an_amount_out_of_bounds_is_a_message_on_the_form(
    owner: Member, amount: str, error: str
) -> None:
    client = client_of(owner)

    reply = client.post("/portal/credits/buy/", {"amount": amount, **attempt_form(client)})

    assert reply.status_code == 200
    assert reply.context["buy_form"].errors["amount"] == [error]


def test_without_stripe_the_form_says_buying_is_not_available(owner: Member) -> None:
    client = client_of(owner)

    reply = client.post("/portal/credits/buy/", {"amount": "25", **attempt_form(client)})

    assert reply.status_code == 200
    assert "Buying credits is not available on this service." in reply.content.decode()


def test_the_automatic_top_up_is_saved_and_audited(owner: Member) -> None:
    form = {"enabled": "on", "threshold": "5", "amount": "20", "monthly_cap": "60"}

    reply = client_of(owner).post("/portal/credits/auto-topup/", form)

    assert (reply.status_code, reply["Location"]) == (302, "/portal/credits/")
    current = topup_settings(owner.account)
    assert (current.enabled, current.threshold, current.amount, current.monthly_cap) == (
        True,
        Decimal(5),
        Decimal(20),
        Decimal(60),
    )
    entry = AuditEntry.objects.get(
        account_id=owner.account_id, object_type="billing.creditsettings"
    )
    assert entry.actor == owner.user.username


@pytest.mark.parametrize(
    ("form", "field", "error"),
    [
        (
            {"enabled": "on", "threshold": "5", "amount": "20", "monthly_cap": "10"},
            "monthly_cap",
            "The cap must allow at least one top-up.",
        ),
        (
            {"enabled": "on", "threshold": "0", "amount": "20", "monthly_cap": "60"},
            "threshold",
            "Give a balance above zero to top up under.",
        ),
        (
            {"enabled": "on", "threshold": "5", "amount": "1", "monthly_cap": "60"},
            "amount",
            "Buy between 5 and 10,000 USD of credits at a time.",
        ),
    ],
)
def test_a_top_up_that_could_not_run_is_refused(
    owner: Member, form: dict[str, str], field: str, error: str
) -> None:
    reply = client_of(owner).post("/portal/credits/auto-topup/", form)

    assert reply.status_code == 200
    assert reply.context["topup_form"].errors[field] == [error]
    assert topup_settings(owner.account).enabled is False


def test_back_from_paying_the_page_says_whether_the_credits_arrived(owner: Member) -> None:
    granted(owner, "30", reference="cs_test_mine")
    other = account_with_owner()
    granted(other, "99", reference="cs_test_theirs")
    client = client_of(owner)

    mine = client.get("/portal/credits/bought/", {"session_id": "cs_test_mine"}).content.decode()
    theirs = client.get("/portal/credits/bought/", {"session_id": "cs_test_theirs"})

    assert "$30.00 of credits added" in mine
    assert "$99.00" not in theirs.content.decode()
    assert 'id="pending"' in theirs.content.decode()


def test_cancelling_takes_no_payment(owner: Member) -> None:
    reply = client_of(owner).get("/portal/credits/cancelled/", follow=True)

    assert "No payment was taken." in reply.content.decode()
    assert not CreditGrant.objects.filter(account_id=owner.account_id).exists()
