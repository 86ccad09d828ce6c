"""Stripe: our finalised invoices pushed once each, Stripe's news applied once each, and the
two compared (P3). Against a local Stripe-compatible server (tests/billing/stripe_server.py)."""

import hashlib
import hmac
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import stripe
from django.db import connection
from django.db.models import Max
from django.test import Client
from django.utils import timezone
from stripe.params import CustomerCreateParams

from audit.models import AuditEntry
from billing.models import Invoice, InvoiceLine, StripeEvent
from billing.seal import seal_lifted
from billing.services import credit_note_issue, invoices_close
from billing.stripe_sync import (
    NETWORK_RETRIES,
    Discrepancy,
    stripe_client,
    stripe_invoice_push,
    stripe_invoices_push_pending,
    stripe_invoices_reconcile,
)
from customers.models import Account
from customers.services import tiers_ensure_defaults
from fleet.services import backend_register
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    account_make,
    book_create,
    usage,
    usage_write,
)
from tests.billing.stripe_server import KEY_TTL_SECONDS, ResponseDropper, start_stripe
from tests.support.http import call
from tests.support.servers import Server
from tests.support.tenants import MODEL, UPSTREAM_MODEL, Tenant, tenant_create
from tests.support.waiting import wait_until

# Tests run in a transaction rolled back after them (django_db), but for the two that need
# what they write seen by other connections (threads, a gateway): those clean up after them.
pytestmark = pytest.mark.usefixtures("live_db")

SECRET = "whsec_test_secret"
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[Server]:
    server = start_stripe()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def wire(stripe_server: Server) -> Iterator[ResponseDropper]:
    """Between our code and the server: can lose the server's answers."""
    proxy = ResponseDropper(stripe_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def api(wire: ResponseDropper, settings: Any) -> Iterator[stripe.StripeClient]:
    """Our client, through the wire, as the code under test gets it from the settings."""
    settings.STRIPE = {
        "API_KEY": "sk_test_tf",
        "WEBHOOK_SECRET": SECRET,
        "API_BASE": f"http://127.0.0.1:{wire.port}",
    }
    yield stripe_client()
    wire.disarm()


@pytest.fixture
def seen(stripe_server: Server) -> stripe.StripeClient:
    """The test's own view of the server, straight, to count what exists there."""
    return stripe.StripeClient("sk_test_tf", base_addresses={"api": stripe_server.url})


@pytest.fixture
def tenant(live_db: None) -> Tenant:
    """An account with a key, on a tier of its own making: a transactional test module run
    before this one empties every table, the session's default tiers included."""
    tiers_ensure_defaults()
    return tenant_create()


@pytest.fixture
def committed() -> Iterator[None]:
    """Removes the invoices, Stripe events and audit entries a committing test made.

    Finalised invoices refuse deletion (billing's triggers, which fire ALWAYS), so the clean-up
    lifts the seal for its own transaction, as the tables' owner does for maintenance.
    """
    tables = (Invoice, StripeEvent, AuditEntry)
    before = {model: model.objects.aggregate(last=Max("pk"))["last"] or 0 for model in tables}
    yield
    with seal_lifted():
        InvoiceLine.objects.filter(invoice_id__gt=before[Invoice]).delete()
        for model, last in before.items():
            model.objects.filter(pk__gt=last).delete()


def invoice_make(
    account: Account,
    amounts: list[int],
    *,
    period_start: datetime = OCTOBER,
    kind: str = Invoice.Kind.INVOICE,
    currency: str = "USD",
    finalised_at: datetime | None = None,
) -> Invoice:
    """A finalised invoice with one line per amount (minor units), as billing closes them."""
    period_end = (period_start + timedelta(days=32)).replace(day=1)
    invoice = Invoice.objects.create(
        account=account,
        kind=kind,
        period_start=period_start,
        period_end=period_end,
        currency=currency,
        amount=Decimal(sum(amounts)) / 100,
        total_minor=sum(amounts),
    )
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            item=item,
            tier="premium",
            model=MODEL,
            quantity=1_000_000 + n,
            unit_price=Decimal("0.600000"),
            amount=Decimal(amount) / 100,
            amount_minor=amount,
            usage_from=period_start,
            usage_to=period_end,
        )
        for n, (item, amount) in enumerate(zip(_items(amounts), amounts, strict=True))
    )
    Invoice.objects.filter(pk=invoice.pk).update(
        status=Invoice.Status.FINALISED,
        number=f"T-{uuid.uuid4().hex[:12]}",
        finalised_at=finalised_at or timezone.now(),
    )
    return Invoice.objects.get(pk=invoice.pk)


def _items(amounts: list[int]) -> list[str]:
    kinds = [InvoiceLine.Item.INPUT, InvoiceLine.Item.OUTPUT, InvoiceLine.Item.REASONING]
    return [
        InvoiceLine.Item.INCLUDED if amount < 0 else kinds[n % len(kinds)]
        for n, amount in enumerate(amounts)
    ]


def customers_of(seen: stripe.StripeClient, account: Account) -> list[stripe.Customer]:
    return [
        customer
        for customer in seen.v1.customers.list(params={"limit": 100}).auto_paging_iter()
        if customer.metadata["tf_account_id"] == str(account.pk)
    ]


def invoices_of(seen: stripe.StripeClient, account: Account) -> list[stripe.Invoice]:
    customer = Account.objects.get(pk=account.pk).stripe_customer_id
    return list(seen.v1.invoices.list(params={"customer": customer}).auto_paging_iter())


def lines_of(seen: stripe.StripeClient, stripe_invoice_id: str) -> list[stripe.InvoiceLineItem]:
    return list(seen.v1.invoices.line_items.list(stripe_invoice_id).auto_paging_iter())


def keys_seen(stripe_server: Server) -> list[str]:
    with urllib.request.urlopen(stripe_server.url + "/_config/idempotency") as reply:  # noqa: S310
        return list(json.load(reply)["keys"])


def keys_forget(stripe_server: Server) -> None:
    """A day passes at the server: Stripe forgets the idempotency keys it has seen."""
    url = f"{stripe_server.url}/_config/clock?advance={KEY_TTL_SECONDS}"
    urllib.request.urlopen(urllib.request.Request(url, method="POST")).close()  # noqa: S310


# Pushing invoices


@pytest.mark.django_db
def test_it_makes_one_stripe_customer_per_account(
    api: stripe.StripeClient, seen: stripe.StripeClient, tenant: Tenant
) -> None:
    september = OCTOBER.replace(month=9)
    stripe_invoice_push(invoice_id=invoice_make(tenant.account, [1000]).pk)
    stripe_invoice_push(invoice_id=invoice_make(tenant.account, [2000], period_start=september).pk)

    [customer] = customers_of(seen, tenant.account)
    assert customer.name == tenant.account.name
    assert Account.objects.get(pk=tenant.account.pk).stripe_customer_id == customer.id
    assert len(invoices_of(seen, tenant.account)) == 2


@pytest.mark.django_db
def test_a_pushed_invoice_has_one_item_per_line_for_its_minor_units(
    api: stripe.StripeClient, seen: stripe.StripeClient, tenant: Tenant
) -> None:
    invoice = invoice_make(tenant.account, [123_456, 1, 0, -2_500])

    stripe_id = stripe_invoice_push(invoice_id=invoice.pk)

    remote = seen.v1.invoices.retrieve(stripe_id)
    assert (remote.status, remote.currency, remote.number) == ("open", "usd", invoice.number)
    assert remote.subtotal == invoice.total_minor == 120_957
    ours = {line.pk: line for line in invoice.lines.all()}
    theirs = {int(line.metadata["tf_invoice_line_id"]): line for line in lines_of(seen, stripe_id)}
    assert {pk: line.amount for pk, line in theirs.items()} == {
        pk: line.amount_minor for pk, line in ours.items()
    }
    for pk, line in ours.items():
        assert theirs[pk].metadata["usage_from"] == line.usage_from.isoformat()
    invoice.refresh_from_db()
    assert (invoice.stripe_invoice_id, invoice.payment) == (stripe_id, Invoice.Payment.OPEN)
    stored = {line.pk: line.stripe_item_id for line in invoice.lines.all()}
    assert stored == {
        pk: line.parent.invoice_item_details.invoice_item for pk, line in theirs.items()
    }


@pytest.mark.django_db
def test_pushing_again_makes_nothing_new(
    api: stripe.StripeClient, seen: stripe.StripeClient, tenant: Tenant
) -> None:
    invoice = invoice_make(tenant.account, [700, 300])
    first = stripe_invoice_push(invoice_id=invoice.pk)

    assert stripe_invoice_push(invoice_id=invoice.pk) == first
    stripe_invoices_push_pending()
    stripe_invoices_push_pending()

    assert len(customers_of(seen, tenant.account)) == 1
    assert [remote.id for remote in invoices_of(seen, tenant.account)] == [first]
    assert len(lines_of(seen, first)) == 2


@pytest.mark.django_db
def test_the_pending_job_pushes_each_finalised_invoice_but_those_of_zero(
    api: stripe.StripeClient, seen: stripe.StripeClient, tenant: Tenant
) -> None:
    owing = invoice_make(tenant.account, [4_200])
    nothing = invoice_make(tenant_create().account, [0])

    counts = stripe_invoices_push_pending()

    assert counts["failed"] == 0
    owing.refresh_from_db()
    nothing.refresh_from_db()
    assert [remote.id for remote in invoices_of(seen, tenant.account)] == [owing.stripe_invoice_id]
    assert (nothing.stripe_invoice_id, nothing.payment) == ("", Invoice.Payment.NONE)
    assert customers_of(seen, nothing.account) == []


@pytest.mark.django_db
def test_while_stripe_is_out_of_reach_nothing_is_marked_pushed_and_the_next_run_pushes(
    api: stripe.StripeClient, seen: stripe.StripeClient, wire: ResponseDropper, tenant: Tenant
) -> None:
    invoice = invoice_make(tenant.account, [3_300])
    wire.cut()
    try:
        with pytest.raises(stripe.APIConnectionError):
            stripe_invoices_push_pending()
    finally:
        wire.restore()
    invoice.refresh_from_db()
    assert (invoice.stripe_invoice_id, invoice.payment) == ("", Invoice.Payment.NONE)

    assert stripe_invoices_push_pending()["failed"] == 0

    invoice.refresh_from_db()
    assert [remote.id for remote in invoices_of(seen, tenant.account)] == [
        invoice.stripe_invoice_id
    ]


@pytest.mark.django_db
def test_every_stripe_write_carries_a_key_made_of_our_ids(
    api: stripe.StripeClient, stripe_server: Server, tenant: Tenant
) -> None:
    invoice = invoice_make(tenant.account, [100, 200])
    before = len(keys_seen(stripe_server))

    stripe_invoice_push(invoice_id=invoice.pk)

    first, second = invoice.lines.order_by("pk").values_list("pk", flat=True)
    assert keys_seen(stripe_server)[before:] == [
        f"tf-customer-{tenant.account.pk}",
        f"tf-invoice-{invoice.pk}",
        f"tf-invoice-{invoice.pk}-line-{first}",
        f"tf-invoice-{invoice.pk}-line-{second}",
        f"tf-invoice-{invoice.pk}-finalize",
    ]


@pytest.mark.django_db
def test_lost_answers_make_no_second_stripe_object(
    api: stripe.StripeClient, seen: stripe.StripeClient, wire: ResponseDropper, tenant: Tenant
) -> None:
    invoice = invoice_make(tenant.account, [1_500, 2_500])
    dropped = wire.dropped
    for request in (b"POST /v1/customers ", b"POST /v1/invoices ", b"POST /v1/invoiceitems "):
        wire.drop_responses(request)
    wire.drop_responses(b"POST /v1/invoices/", times=1)  # the finalisation

    stripe_id = stripe_invoice_push(invoice_id=invoice.pk)

    assert wire.dropped - dropped == 4
    assert len(customers_of(seen, tenant.account)) == 1
    assert [remote.id for remote in invoices_of(seen, tenant.account)] == [stripe_id]
    assert sorted(line.amount for line in lines_of(seen, stripe_id)) == [1_500, 2_500]
    assert seen.v1.invoices.retrieve(stripe_id).status == "open"


@pytest.mark.django_db
def test_a_push_cut_off_after_stripe_acted_is_completed_later_without_duplicates(
    api: stripe.StripeClient,
    seen: stripe.StripeClient,
    wire: ResponseDropper,
    stripe_server: Server,
    tenant: Tenant,
) -> None:
    invoice = invoice_make(tenant.account, [10, 20, 30])
    # Every try of the first item's creation loses its answer: the push gives up, ours rolls
    # back, while Stripe holds the draft and that item.
    wire.drop_responses(b"POST /v1/invoiceitems ", times=NETWORK_RETRIES + 1)
    with pytest.raises(stripe.APIConnectionError):
        stripe_invoice_push(invoice_id=invoice.pk)
    invoice.refresh_from_db()
    assert (invoice.stripe_invoice_id, invoice.payment) == ("", Invoice.Payment.NONE)
    [draft] = invoices_of(seen, tenant.account)
    assert (draft.status, len(lines_of(seen, draft.id))) == ("draft", 1)

    keys_forget(stripe_server)  # as a day later: only our ids in the metadata remain
    stripe_id = stripe_invoice_push(invoice_id=invoice.pk)

    assert stripe_id == draft.id
    assert [remote.id for remote in invoices_of(seen, tenant.account)] == [draft.id]
    assert sorted(line.amount for line in lines_of(seen, stripe_id)) == [10, 20, 30]
    assert seen.v1.invoices.retrieve(stripe_id).subtotal == 60


@pytest.mark.django_db
def test_a_customer_whose_answer_was_lost_is_found_again_after_stripe_forgot_the_key(
    api: stripe.StripeClient,
    seen: stripe.StripeClient,
    wire: ResponseDropper,
    stripe_server: Server,
    tenant: Tenant,
) -> None:
    invoice = invoice_make(tenant.account, [4_000])
    # Stripe makes the customer; every try's answer is lost, so we never learn its id.
    wire.drop_responses(b"POST /v1/customers ", times=NETWORK_RETRIES + 1)
    with pytest.raises(stripe.APIConnectionError):
        stripe_invoice_push(invoice_id=invoice.pk)
    assert Account.objects.get(pk=tenant.account.pk).stripe_customer_id == ""
    [made] = customers_of(seen, tenant.account)

    keys_forget(stripe_server)  # pushed again a day later: the key no longer protects
    stripe_id = stripe_invoice_push(invoice_id=invoice.pk)

    assert [customer.id for customer in customers_of(seen, tenant.account)] == [made.id]
    assert Account.objects.get(pk=tenant.account.pk).stripe_customer_id == made.id
    assert seen.v1.invoices.retrieve(stripe_id).customer == made.id


def test_the_local_stripe_keeps_idempotency_keys_as_stripe_does(
    seen: stripe.StripeClient, stripe_server: Server
) -> None:
    key = f"tf-test-{uuid.uuid4().hex}"
    params: CustomerCreateParams = {"name": "once", "metadata": {"tf_account_id": "test-keys"}}
    first = seen.v1.customers.create(params=params, options={"idempotency_key": key})

    assert seen.v1.customers.create(params=params, options={"idempotency_key": key}).id == first.id
    with pytest.raises(stripe.IdempotencyError) as refused:
        seen.v1.customers.create(
            params={"name": "other", "metadata": {"tf_account_id": "test-keys"}},
            options={"idempotency_key": key},
        )
    assert refused.value.http_status == 400
    keys_forget(stripe_server)
    later = seen.v1.customers.create(params=params, options={"idempotency_key": key})
    assert later.id != first.id


def test_two_workers_pushing_at_once_make_one_stripe_invoice(
    committed: None, api: stripe.StripeClient, seen: stripe.StripeClient, tenant: Tenant
) -> None:
    invoice = invoice_make(tenant.account, [999, 1])
    results: list[str] = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        try:
            results.append(stripe_invoice_push(invoice_id=invoice.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(results) == 2 and results[0] == results[1]
    assert len(customers_of(seen, tenant.account)) == 1
    assert [remote.id for remote in invoices_of(seen, tenant.account)] == [results[0]]
    assert len(lines_of(seen, results[0])) == 2


@pytest.mark.django_db
def test_a_credit_note_goes_to_stripe_negative_and_is_settled_at_once(
    api: stripe.StripeClient, seen: stripe.StripeClient, tenant: Tenant
) -> None:
    credit = invoice_make(tenant.account, [-500, -46], kind=Invoice.Kind.CREDIT_NOTE)

    stripe_id = stripe_invoice_push(invoice_id=credit.pk)

    remote = seen.v1.invoices.retrieve(stripe_id)
    assert (remote.subtotal, remote.status) == (-546, "paid")
    credit.refresh_from_db()
    assert credit.payment == Invoice.Payment.PAID
    assert credit.paid_at is not None


@pytest.mark.django_db
def test_a_closed_month_is_in_stripe_line_for_line_and_so_is_its_credit_note(
    api: stripe.StripeClient, seen: stripe.StripeClient
) -> None:
    prices = PriceSpec(
        "premium", "*", Decimal(3), Decimal("0.3"), Decimal(15), fee=Decimal("0.001")
    )
    book_create(BookSpec(MONTH - timedelta(days=40), [prices], {"premium": (Decimal(20), 1000)}))
    account = account_make("premium")
    usage_write(
        [
            usage(
                MONTH + timedelta(hours=n),
                account_id=account.pk,
                prompt=1000 * n + 7,
                cached=n,
                completion=333 * n,
                reasoning=n,
            )
            for n in range(1, 30)
        ]
    )
    invoices_close(period_start=MONTH, now=NEXT_MONTH + timedelta(hours=3))
    invoice = Invoice.objects.get(account=account)

    remote = seen.v1.invoices.retrieve(stripe_invoice_push(invoice_id=invoice.pk))

    assert (remote.number, remote.subtotal, remote.status) == (
        invoice.number,
        invoice.total_minor,
        "open",
    )
    theirs = {
        int(line.metadata["tf_invoice_line_id"]): line.amount for line in lines_of(seen, remote.id)
    }
    assert theirs == dict(invoice.lines.values_list("pk", "amount_minor"))
    assert len(theirs) > 3

    credit = credit_note_issue(invoice=invoice, memo="goodwill", amount_minor=1_234)
    credited = seen.v1.invoices.retrieve(stripe_invoice_push(invoice_id=credit.pk))

    assert (credited.number, credited.subtotal, credited.status) == (credit.number, -1_234, "paid")


# Reconciliation


@pytest.mark.django_db
def test_reconciliation_reports_each_difference_with_stripe(
    api: stripe.StripeClient, seen: stripe.StripeClient, tenant: Tenant
) -> None:
    since = timezone.now() - timedelta(hours=3)
    account = tenant.account
    months = [OCTOBER.replace(month=month) for month in (5, 6, 7, 8, 9)]
    agreed = invoice_make(account, [1_000], period_start=months[0])
    paid_there = invoice_make(account, [2_000], period_start=months[1])
    altered = invoice_make(account, [3_000], period_start=months[2])
    never_pushed = invoice_make(
        tenant_create().account, [4_000], finalised_at=timezone.now() - timedelta(hours=2)
    )
    just_finalised = invoice_make(tenant_create().account, [5_000])
    for invoice in (agreed, paid_there):
        stripe_invoice_push(invoice_id=invoice.pk)
    customer = Account.objects.get(pk=account.pk).stripe_customer_id
    # Stripe's invoice for `altered` is not what we billed (made by hand at Stripe).
    other = seen.v1.invoices.create(
        params={
            "customer": customer,
            "currency": "usd",
            "metadata": {"tf_invoice_id": str(altered.pk)},
        }
    )
    seen.v1.invoice_items.create(
        params={"customer": customer, "invoice": other.id, "amount": 2_999, "currency": "usd"}
    )
    seen.v1.invoices.finalize_invoice(other.id)
    Invoice.objects.filter(pk=altered.pk).update(stripe_invoice_id=other.id, payment="open")
    # Paid at Stripe, the webhook lost.
    card = seen.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    seen.v1.payment_methods.attach(card.id, params={"customer": customer})
    seen.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": card.id}}
    )
    paid_there.refresh_from_db()
    seen.v1.invoices.pay(paid_there.stripe_invoice_id)
    # A second Stripe invoice for one of ours, and one that is none of ours.
    for metadata in ({"tf_invoice_id": str(agreed.pk)}, {}):
        extra = seen.v1.invoices.create(
            params={"customer": customer, "currency": "usd", "metadata": metadata}
        )
        seen.v1.invoice_items.create(
            params={"customer": customer, "invoice": extra.id, "amount": 77, "currency": "usd"}
        )

    report = stripe_invoices_reconcile(since=since)

    agreed.refresh_from_db()
    found = {
        (item.problem, item.number, item.ours, item.theirs)
        for item in report
        if not item.problem.endswith("_customer")  # the test server's customers: see below
    }
    assert found == {
        ("status", paid_there.number, "open", "paid"),
        ("amount", altered.number, "3000", "2999"),
        ("missing", never_pushed.number, "finalised", "none"),
        ("duplicate", agreed.number, agreed.stripe_invoice_id, _stray(report, "duplicate")),
        ("unknown", "", "", "77 draft"),
    }
    assert just_finalised.number not in {item.number for item in report}


@pytest.mark.django_db
def test_reconciliation_reports_an_account_with_two_stripe_customers_and_a_strange_one(
    api: stripe.StripeClient,
    seen: stripe.StripeClient,
    tenant: Tenant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stripe_invoice_push(invoice_id=invoice_make(tenant.account, [1_000]).pk)
    used = Account.objects.get(pk=tenant.account.pk).stripe_customer_id
    account_id = str(tenant.account.pk)
    # Made at Stripe without us: by hand, or by a push whose answer was lost past every check.
    second = seen.v1.customers.create(
        params={"name": tenant.account.name, "metadata": {"tf_account_id": account_id}}
    )
    nobody = f"{10**12 + tenant.account.pk}"
    stranger = seen.v1.customers.create(
        params={"name": "who?", "metadata": {"tf_account_id": nobody}}
    )

    report = stripe_invoices_reconcile(since=timezone.now() - timedelta(hours=1))

    found = {
        (item.problem, item.account_id, item.ours, frozenset(item.theirs.split()))
        for item in report
        if item.account_id in (account_id, nobody)
    }
    assert found == {
        ("duplicate_customer", account_id, used, frozenset({used, second.id})),
        ("unknown_customer", nobody, "", frozenset({stranger.id})),
    }
    warnings = [r for r in caplog.records if r.getMessage().endswith("duplicate_customer")]
    assert [r.account_id for r in warnings if r.account_id == account_id] == [account_id]  # type: ignore[attr-defined]


@pytest.mark.django_db
def test_usage_billed_late_says_so_on_its_stripe_item(
    api: stripe.StripeClient, seen: stripe.StripeClient
) -> None:
    prices = PriceSpec("premium", "*", Decimal(3), Decimal("0.3"), Decimal(15))
    book_create(BookSpec(MONTH - timedelta(days=40), [prices]))
    account = account_make("premium")
    usage_write([usage(MONTH + timedelta(days=2), account_id=account.pk)])
    invoices_close(period_start=MONTH, now=NEXT_MONTH + timedelta(hours=3))
    # Stored after March closed (a spool replayed late), beside April's own usage.
    usage_write(
        [
            usage(MONTH + timedelta(days=30), account_id=account.pk, prompt=5_000),
            usage(NEXT_MONTH + timedelta(days=3), account_id=account.pk),
        ]
    )
    may = NEXT_MONTH.replace(month=5)
    invoices_close(period_start=NEXT_MONTH, now=may + timedelta(hours=3))
    invoice = Invoice.objects.get(account=account, period_start=NEXT_MONTH)

    stripe_id = stripe_invoice_push(invoice_id=invoice.pk)

    described = {
        int(line.metadata["tf_invoice_line_id"]): str(line.description)
        for line in lines_of(seen, stripe_id)
        if line.metadata is not None
    }
    ours = list(invoice.lines.order_by("usage_from", "item"))
    assert [(line.usage_from, line.item) for line in ours] == [
        (MONTH, "input"),
        (MONTH, "output"),
        (NEXT_MONTH, "input"),
        (NEXT_MONTH, "output"),
    ]
    assert described[ours[0].pk] == (
        "Input, premium llama: 5,000 at 3.000000 (usage of Mar 2025, billed late)"
    )
    assert described[ours[1].pk].endswith(" (usage of Mar 2025, billed late)")
    assert [described[line.pk].endswith(", billed late)") for line in ours[2:]] == [False, False]


def _stray(report: list[Discrepancy], problem: str) -> str:
    [item] = [item for item in report if item.problem == problem]
    return item.stripe_invoice_id


# Webhooks


def signed(
    event: dict[str, Any], *, secret: str = SECRET, at: float | None = None
) -> dict[str, Any]:
    """The request Stripe would send: the body and `t=<time>,v1=<HMAC-SHA256(t.body)>`."""
    body = json.dumps(event).encode()
    timestamp = int(at or time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return {"data": body, "headers": {"Stripe-Signature": f"t={timestamp},v1={mac.hexdigest()}"}}


def invoice_event(kind: str, invoice: Invoice, **fields: object) -> dict[str, Any]:
    remote = {"id": invoice.stripe_invoice_id, "object": "invoice", "status": "open"}
    remote["metadata"] = {"tf_invoice_id": str(invoice.pk)}
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": remote | fields},
    }


def post_event(request: dict[str, Any]) -> Any:
    return Client().post("/billing/stripe/webhook", content_type="application/json", **request)


@pytest.fixture
def pushed(tenant: Tenant, settings: Any) -> Invoice:
    """An invoice Stripe is collecting (its Stripe id as a push would have stored it)."""
    settings.STRIPE = {"API_KEY": "", "WEBHOOK_SECRET": SECRET, "API_BASE": ""}
    invoice = invoice_make(tenant.account, [12_000])
    Invoice.objects.filter(pk=invoice.pk).update(
        stripe_invoice_id=f"in_{uuid.uuid4().hex[:14]}", payment=Invoice.Payment.OPEN
    )
    return Invoice.objects.get(pk=invoice.pk)


@pytest.mark.django_db
def test_an_event_with_a_bad_signature_is_refused_and_changes_nothing(pushed: Invoice) -> None:
    paid = invoice_event("invoice.paid", pushed)
    forged = signed(paid, secret="whsec_someone_else")
    tampered = signed(paid)
    tampered["data"] = tampered["data"].replace(b"invoice.paid", b"invoice.xpaid")
    replayed = signed(paid, at=time.time() - 600)
    unsigned = {"data": json.dumps(paid).encode()}

    for request in (forged, tampered, replayed, unsigned):
        assert post_event(request).status_code == 400

    pushed.refresh_from_db()
    assert pushed.payment == Invoice.Payment.OPEN
    assert not StripeEvent.objects.filter(event_id=paid["id"]).exists()


@pytest.mark.django_db
def test_no_event_is_accepted_while_no_secret_is_set(pushed: Invoice, settings: Any) -> None:
    settings.STRIPE = {"API_KEY": "", "WEBHOOK_SECRET": "", "API_BASE": ""}
    paid = invoice_event("invoice.paid", pushed)

    assert post_event(signed(paid, secret="")).status_code == 503
    pushed.refresh_from_db()
    assert pushed.payment == Invoice.Payment.OPEN


@pytest.mark.django_db
def test_invoice_paid_marks_ours_paid_when_stripe_says(pushed: Invoice) -> None:
    paid_at = int(time.time()) - 3600
    event = invoice_event("invoice.paid", pushed, status_transitions={"paid_at": paid_at})

    reply = post_event(signed(event))

    assert (reply.status_code, reply.json()) == (200, {"received": True, "duplicate": False})
    pushed.refresh_from_db()
    assert pushed.payment == Invoice.Payment.PAID
    assert pushed.paid_at == datetime.fromtimestamp(paid_at, UTC)
    assert StripeEvent.objects.get(event_id=event["id"]).payload == event


@pytest.mark.django_db
def test_a_failed_payment_stripe_will_retry_leaves_the_account_working(pushed: Invoice) -> None:
    retry_at = int(time.time()) + 3 * 86400
    event = invoice_event("invoice.payment_failed", pushed, next_payment_attempt=retry_at)

    assert post_event(signed(event)).status_code == 200

    pushed.refresh_from_db()
    assert pushed.payment == Invoice.Payment.FAILED
    assert Account.objects.get(pk=pushed.account_id).status == Account.Status.ACTIVE


@pytest.fixture
def served(gateway: Server, simulator: Server) -> Server:
    """The session's gateway with its backend registered: a transactional test module run
    before this one may have emptied the table since the session registered it."""
    backend_register(
        name="sim-a",
        base_url=simulator.url,
        upstream_model=UPSTREAM_MODEL,
        public_models=[MODEL],
        supports_priority=True,
    )
    return gateway


def test_when_stripe_gives_up_the_account_is_suspended_and_its_keys_refused(
    committed: None, served: Server, pushed: Invoice, tenant: Tenant
) -> None:
    gateway = served
    wait_until(
        lambda: chat(gateway, tenant.key) == 200,
        timeout=10,
        interval=0.2,
        what="the gateway to serve the account",
    )
    event = invoice_event("invoice.payment_failed", pushed, next_payment_attempt=None)

    assert post_event(signed(event)).status_code == 200

    assert Account.objects.get(pk=pushed.account_id).status == Account.Status.SUSPENDED
    entry = AuditEntry.objects.get(
        object_type="customers.account", object_id=str(pushed.account_id), actor="stripe"
    )
    assert (entry.action, entry.after["status"]) == ("suspend", "suspended")

    def refused() -> int | None:
        status = chat(gateway, tenant.key)
        return None if status == 200 else status

    status = wait_until(
        refused, timeout=10, interval=0.2, what="the gateway to refuse the suspended key"
    )
    assert status == 403


def chat(gateway: Server, key: str) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return call("POST", gateway.url + "/v1/chat/completions", json.dumps(body).encode(), key).status


@pytest.mark.django_db
def test_an_event_sent_twice_is_stored_and_applied_once(pushed: Invoice) -> None:
    gave_up = invoice_event("invoice.payment_failed", pushed, next_payment_attempt=None)
    assert post_event(signed(gave_up)).status_code == 200
    # Staff look into it and reactivate the account; then Stripe delivers the event again.
    Account.objects.filter(pk=pushed.account_id).update(status=Account.Status.ACTIVE)

    reply = post_event(signed(gave_up))

    assert (reply.status_code, reply.json()["duplicate"]) == (200, True)
    assert StripeEvent.objects.filter(event_id=gave_up["id"]).count() == 1
    assert Account.objects.get(pk=pushed.account_id).status == Account.Status.ACTIVE


@pytest.mark.django_db
def test_news_of_a_failed_attempt_after_the_payment_changes_nothing(pushed: Invoice) -> None:
    paid = invoice_event("invoice.paid", pushed, status_transitions={"paid_at": int(time.time())})
    late = invoice_event("invoice.payment_failed", pushed, next_payment_attempt=None)

    for event in (paid, late):
        assert post_event(signed(event)).status_code == 200

    pushed.refresh_from_db()
    assert pushed.payment == Invoice.Payment.PAID
    assert Account.objects.get(pk=pushed.account_id).status == Account.Status.ACTIVE


@pytest.mark.django_db
def test_an_event_may_overtake_the_push_that_stores_the_stripe_id(pushed: Invoice) -> None:
    Invoice.objects.filter(pk=pushed.pk).update(stripe_invoice_id="", payment="none")
    event = invoice_event("invoice.paid", pushed, status_transitions={"paid_at": int(time.time())})
    event["data"]["object"]["id"] = "in_not_stored_yet"

    assert post_event(signed(event)).status_code == 200

    pushed.refresh_from_db()
    assert pushed.payment == Invoice.Payment.PAID
