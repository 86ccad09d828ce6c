"""Buying credits: a Stripe Checkout Session for the amount, credits granted once per paid
session however often (and however concurrently) Stripe's signed news arrives, and automatic
top-ups charged off-session within the month's cap. Against the local Stripe
(tests/billing/stripe_server.py), paid on its hosted page as a customer would."""

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import stripe
from django.db import connection
from django.utils import timezone

from audit.models import AuditEntry
from billing.checkout import (
    BACKOFF,
    CheckoutError,
    TopupSettings,
    auto_topups_run,
    checkout_start,
    topup_configure,
)
from billing.models import CreditGrant, StripeEvent
from billing.selectors import credit_balance
from customers.models import Account, Member
from tests.billing.stripe_server import start_stripe
from tests.billing.test_stripe import SECRET, post_event, signed
from tests.support.members import account_with_owner
from tests.support.servers import Server

SUCCESS = "https://portal.example/credits/bought/?session_id={CHECKOUT_SESSION_ID}"
CANCEL = "https://portal.example/credits/cancelled/"
DECLINING_CARD = "4000000000000341"  # attaches, then every charge is declined


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[Server]:
    server = start_stripe()
    yield server
    server.stop()


@pytest.fixture
def seen(stripe_server: Server, settings: Any) -> stripe.StripeClient:
    """Our code pointed at the local Stripe; the test's own client to look at it."""
    settings.STRIPE = {
        "API_KEY": "sk_test_tf",
        "WEBHOOK_SECRET": SECRET,
        "API_BASE": stripe_server.url,
    }
    return stripe.StripeClient("sk_test_tf", base_addresses={"api": stripe_server.url})


@pytest.fixture
def owner(seen: stripe.StripeClient) -> Member:
    member = account_with_owner()
    Account.objects.filter(pk=member.account_id).update(billing_mode=Account.Billing.PREPAID)
    member.account.refresh_from_db()
    return member


def session_of(seen: stripe.StripeClient, url: str) -> stripe.checkout.Session:
    """The session whose page `url` is (this server's pages are /c/pay/<session id>)."""
    return seen.v1.checkout.sessions.retrieve(url.rsplit("/", 1)[-1])


def pay(url: str, card: str = "4242424242424242") -> tuple[int, str]:
    """The customer pays on Stripe's page: its status and where it sends the browser."""

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    body = urllib.parse.urlencode({"card_number": card}).encode()
    try:
        with urllib.request.build_opener(Stay).open(url, data=body) as reply:
            return reply.status, ""
    except urllib.error.HTTPError as reply:
        return reply.code, reply.headers.get("Location", "")


def stripe_event(server: Server, kind: str, object_id: str) -> dict[str, Any]:
    """The event Stripe made about `object_id`, as it would send it (its JSON)."""
    request = urllib.request.Request(  # noqa: S310
        f"{server.url}/v1/events?type={kind}&limit=100",
        headers={"Authorization": "Bearer sk_test_tf"},
    )
    with urllib.request.urlopen(request) as reply:  # noqa: S310
        events = json.load(reply)["data"]
    [event] = [e for e in events if e["data"]["object"]["id"] == object_id]
    return dict(event)


def bought(owner: Member, amount: str = "25.00") -> str:
    """A checkout started by the owner; its URL."""
    return checkout_start(
        owner.account, Decimal(amount), success_url=SUCCESS, cancel_url=CANCEL, actor=owner.user
    )


def grants_of(owner: Member) -> list[CreditGrant]:
    return list(CreditGrant.objects.filter(account_id=owner.account_id).order_by("pk"))


# Starting a purchase


@pytest.mark.django_db
def test_it_opens_a_checkout_for_the_amount_in_billings_currency(
    seen: stripe.StripeClient, owner: Member
) -> None:
    url = bought(owner, "25.50")

    session = session_of(seen, url)
    account = Account.objects.get(pk=owner.account_id)
    assert (session.mode, session.status, session.payment_status) == ("payment", "open", "unpaid")
    assert (session.amount_total, session.currency) == (2550, "usd")
    assert session.customer == account.stripe_customer_id != ""
    assert session.metadata["tf_account_id"] == str(account.pk)
    assert session.metadata["tf_actor"] == owner.user.email
    assert session.success_url == SUCCESS
    assert grants_of(owner) == []


@pytest.mark.django_db
def test_one_attempt_sent_twice_opens_one_checkout(
    seen: stripe.StripeClient, owner: Member
) -> None:
    attempt = uuid.uuid4().hex
    urls = {
        checkout_start(
            owner.account,
            Decimal(10),
            success_url=SUCCESS,
            cancel_url=CANCEL,
            actor=owner.user,
            request_key=attempt,
        )
        for _ in range(2)
    }
    assert len(urls) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("4.99", "Buy between 5 and 10,000 USD of credits at a time."),
        ("10000.01", "Buy between 5 and 10,000 USD of credits at a time."),
        ("10.005", "Give the amount in whole USD cents."),
        ("NaN", "Give the amount in whole USD cents."),
    ],
)
def test_amounts_out_of_bounds_open_no_checkout(
    seen: stripe.StripeClient, owner: Member, amount: str, message: str
) -> None:
    before = len(seen.v1.checkout.sessions.list(params={"limit": 100}).data)
    with pytest.raises(CheckoutError) as refused:
        bought(owner, amount)
    assert str(refused.value) == message
    assert len(seen.v1.checkout.sessions.list(params={"limit": 100}).data) == before


@pytest.mark.django_db
def test_an_account_billed_by_invoice_buys_no_credits_it_could_not_use(
    seen: stripe.StripeClient,
) -> None:
    member = account_with_owner()  # billed in arrears: its usage never draws credits down
    before = len(seen.v1.checkout.sessions.list(params={"limit": 100}).data)
    with pytest.raises(CheckoutError, match="prepaid billing"):
        bought(member)
    assert len(seen.v1.checkout.sessions.list(params={"limit": 100}).data) == before


@pytest.mark.django_db
def test_without_stripe_configured_a_purchase_says_so(owner: Member, settings: Any) -> None:
    settings.STRIPE = {"API_KEY": "", "WEBHOOK_SECRET": SECRET, "API_BASE": ""}
    with pytest.raises(CheckoutError, match="not available on this service"):
        bought(owner)


# Stripe's news of a paid checkout


@pytest.mark.django_db
def test_a_paid_checkout_grants_its_amount_once_however_often_stripe_says_so(
    seen: stripe.StripeClient, stripe_server: Server, owner: Member
) -> None:
    url = bought(owner, "25.00")
    session = session_of(seen, url)
    assert pay(url) == (303, SUCCESS.replace("{CHECKOUT_SESSION_ID}", session.id))
    event = stripe_event(stripe_server, "checkout.session.completed", session.id)

    replies = [post_event(signed(event)) for _ in range(5)]

    assert [r.status_code for r in replies] == [200] * 5
    assert [r.json()["duplicate"] for r in replies] == [False, True, True, True, True]
    [grant] = grants_of(owner)
    assert (grant.amount, grant.currency, grant.source) == (Decimal("25"), "USD", "purchase")
    assert grant.reference == session.id
    assert credit_balance(owner.account) == Decimal("25")
    assert (
        AuditEntry.objects.filter(action="credit_grant", account_id=owner.account_id).count() == 1
    )


@pytest.mark.django_db
def test_the_amount_granted_is_stripes_not_the_events(
    seen: stripe.StripeClient, stripe_server: Server, owner: Member
) -> None:
    url = bought(owner, "25.00")
    session = session_of(seen, url)
    pay(url)
    event = stripe_event(stripe_server, "checkout.session.completed", session.id)
    event["data"]["object"]["amount_total"] = 99_999_00

    assert post_event(signed(event)).status_code == 200

    assert [g.amount for g in grants_of(owner)] == [Decimal("25")]


@pytest.mark.django_db
def test_a_checkout_not_paid_grants_nothing(
    seen: stripe.StripeClient, stripe_server: Server, owner: Member
) -> None:
    url = bought(owner)
    session = session_of(seen, url)
    # The card is declined on Stripe's page; the session stays open for another card.
    assert pay(url, card=DECLINING_CARD)[0] == 402
    forged = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {"object": {"id": session.id, "object": "checkout.session"}},
    }

    assert post_event(signed(forged)).status_code == 200

    assert seen.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert grants_of(owner) == []


@pytest.mark.django_db
def test_news_with_a_bad_signature_is_refused_and_grants_nothing(
    seen: stripe.StripeClient, stripe_server: Server, owner: Member
) -> None:
    url = bought(owner)
    session = session_of(seen, url)
    pay(url)
    event = stripe_event(stripe_server, "checkout.session.completed", session.id)

    for request in (signed(event, secret="whsec_other"), signed(event, at=time.time() - 600)):
        assert post_event(request).status_code == 400

    assert grants_of(owner) == []
    assert not StripeEvent.objects.filter(event_id=event["id"]).exists()


@pytest.mark.django_db(transaction=True)
def test_deliveries_at_once_grant_once(
    seen: stripe.StripeClient, stripe_server: Server, owner: Member
) -> None:
    """Eight deliveries of the event at once, and Stripe's other news of the same payment
    (a second event id), from threads with their own connections: one grant."""
    url = bought(owner, "40.00")
    session = session_of(seen, url)
    pay(url)
    event = stripe_event(stripe_server, "checkout.session.completed", session.id)
    other = dict(
        event, id=f"evt_{uuid.uuid4().hex}", type="checkout.session.async_payment_succeeded"
    )
    requests = [signed(event)] * 8 + [signed(other)] * 2
    start = threading.Barrier(len(requests))
    statuses: list[int] = []

    def deliver(request: dict[str, Any]) -> None:
        start.wait()
        try:
            statuses.append(post_event(request).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [200] * len(requests)
    assert [(g.amount, g.reference) for g in grants_of(owner)] == [(Decimal("40"), session.id)]
    assert StripeEvent.objects.filter(event_id__in=[event["id"], other["id"]]).count() == 2


# Automatic top-ups


def topup_set(owner: Member, threshold: str, amount: str, cap: str) -> None:
    wanted = TopupSettings(
        enabled=True, threshold=Decimal(threshold), amount=Decimal(amount), monthly_cap=Decimal(cap)
    )
    topup_configure(account=owner.account, wanted=wanted, actor=owner.user)


@pytest.fixture
def card_saved(
    seen: stripe.StripeClient,
    owner: Member,
    stripe_server: Server,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """The owner bought credits once (10.00), which saved their card at Stripe; the grant is
    in the gateway's counter too, as after its commit."""
    url = bought(owner, "10.00")
    pay(url)
    session = session_of(seen, url)
    event = stripe_event(stripe_server, "checkout.session.completed", session.id)
    with django_capture_on_commit_callbacks(execute=True):
        post_event(signed(event))


def charges_of(seen: stripe.StripeClient, owner: Member) -> list[stripe.PaymentIntent]:
    customer = Account.objects.get(pk=owner.account_id).stripe_customer_id
    intents = seen.v1.payment_intents.list(params={"limit": 100}).data
    return [
        i
        for i in intents
        if i.customer == customer and i.metadata.to_dict().get("tf_purpose") == "auto_topup"
    ]


@pytest.mark.django_db
def test_a_low_balance_is_topped_up_within_the_months_cap(
    seen: stripe.StripeClient, owner: Member, card_saved: None
) -> None:
    topup_set(owner, threshold="1000", amount="20", cap="50")

    outcomes = [auto_topups_run() for _ in range(3)]

    assert [o.get("topped_up", 0) for o in outcomes] == [1, 1, 0]
    assert outcomes[2].get("capped") == 1
    charges = charges_of(seen, owner)
    assert sorted((c.amount, c.status) for c in charges) == [(2000, "succeeded")] * 2
    auto = [g for g in grants_of(owner) if g.reference.startswith("pi_")]
    assert sorted(g.reference for g in auto) == sorted(c.id for c in charges)
    assert credit_balance(owner.account) == Decimal("50")


@pytest.mark.django_db
def test_a_balance_above_the_threshold_is_left_alone(
    seen: stripe.StripeClient, owner: Member, card_saved: None
) -> None:
    topup_set(owner, threshold="5", amount="20", cap="100")

    assert auto_topups_run().get("not_needed") == 1
    assert charges_of(seen, owner) == []


@pytest.mark.django_db
def test_a_declined_card_grants_nothing_and_is_not_retried_at_once(
    seen: stripe.StripeClient, owner: Member, card_saved: None
) -> None:
    customer = Account.objects.get(pk=owner.account_id).stripe_customer_id
    declining = seen.v1.payment_methods.attach(
        "pm_card_chargeCustomerFail", params={"customer": customer}
    )
    seen.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": declining.id}}
    )
    topup_set(owner, threshold="1000", amount="20", cap="100")

    assert auto_topups_run() == {"declined": 1}
    assert auto_topups_run() == {"backing_off": 1}

    assert [c.status for c in charges_of(seen, owner)] == ["requires_payment_method"]
    assert credit_balance(owner.account) == Decimal("10")
    failure = AuditEntry.objects.get(account_id=owner.account_id, action="auto_topup_failed")
    assert failure.after == {
        "amount": "20.00",
        "currency": "USD",
        "code": "card_declined",
        "message": "Your card was declined.",
    }
    # After the back-off it tries again, once: a new charge (not a replay of the first).
    later = timezone.now() + BACKOFF + timedelta(minutes=1)
    assert auto_topups_run(now=later) == {"declined": 1}
    assert len(charges_of(seen, owner)) == 2


@pytest.mark.django_db
def test_without_a_saved_card_nothing_is_charged(seen: stripe.StripeClient, owner: Member) -> None:
    topup_set(owner, threshold="1000", amount="20", cap="100")

    assert auto_topups_run() == {"no_card": 1}
    assert grants_of(owner) == []
