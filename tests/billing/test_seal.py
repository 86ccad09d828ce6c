"""The seal, held by the database whatever writes: a finalised invoice, its lines, the number
counter and a price book in force never change (billing/migrations/0006_seal.py,
catalogue/migrations/0003_seal.py). What may still change, does."""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing.models import Invoice, InvoiceLine, InvoiceNumber
from billing.seal import seal_lifted
from billing.services import credit_note_issue
from catalogue.models import PlanPrice, Price, PriceBook
from customers.models import Account
from tests.billing.factories import MONTH, NEXT_MONTH, account_make
from tests.support.waiting import wait_until

FINALISED = "is finalised"
IN_FORCE = "is in force"
CURRENCY = "XXX"  # ISO 4217's "no currency": no other test's books are in it


@contextmanager
def refused(message: str) -> Iterator[None]:
    """The block's write is refused by the database with `message`, as an integrity error
    (SQLSTATE 23000) that services and the admin show; the transaction goes on."""
    # COPY is psycopg's own: its errors come unwrapped by Django.
    errors = (IntegrityError, psycopg.errors.IntegrityError)
    with pytest.raises(errors, match=message) as error, transaction.atomic():
        yield
    assert getattr(error.value.__cause__ or error.value, "sqlstate", None) == "23000"


def sql(statement: str, *params: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def truncate(tables: str) -> None:
    """TRUNCATE in the test's transaction: Django's deferred foreign keys checked first."""
    sql("SET CONSTRAINTS ALL IMMEDIATE")
    sql(f"TRUNCATE {tables}")


def line_values(invoice: Invoice, amount_minor: int = 5024) -> dict[str, Any]:
    return {
        "invoice": invoice,
        "item": InvoiceLine.Item.OUTPUT,
        "tier": "premium",
        "model": "llama",
        "quantity": 1_000_000,
        "unit_price": Decimal("50.24"),
        "amount": Decimal(amount_minor) / 100,
        "amount_minor": amount_minor,
        "usage_from": MONTH,
        "usage_to": NEXT_MONTH,
    }


def invoice_make(account: Account, *, number: str | None) -> Invoice:
    """A draft with one line; finalised as billing does it (lines first) when `number` is
    given."""
    invoice = Invoice.objects.create(
        account=account,
        period_start=MONTH if number else NEXT_MONTH,
        period_end=NEXT_MONTH if number else NEXT_MONTH + timedelta(days=30),
        amount=Decimal("50.24"),
        total_minor=5024,
    )
    InvoiceLine.objects.create(**line_values(invoice))
    if number:
        Invoice.objects.filter(pk=invoice.pk).update(
            number=number, status=Invoice.Status.FINALISED, finalised_at=timezone.now()
        )
        invoice.refresh_from_db()
    return invoice


def lines_total(invoice: Invoice) -> list[int]:
    return list(invoice.lines.values_list("amount_minor", flat=True))


# Invoices and their lines -------------------------------------------------------------------


@pytest.fixture
def invoices(db: None) -> tuple[Invoice, Invoice]:
    """A finalised invoice (one line of 5,024) and a draft of the same account."""
    account = account_make("premium")
    return invoice_make(account, number="TF-2025-000001"), invoice_make(account, number=None)


def test_a_line_cannot_be_added_to_a_finalised_invoice(
    invoices: tuple[Invoice, Invoice],
) -> None:
    finalised, _ = invoices
    with refused(FINALISED):
        InvoiceLine.objects.create(**line_values(finalised, 10_000))
    with refused(FINALISED):
        InvoiceLine.objects.bulk_create([InvoiceLine(**line_values(finalised, 10_000))])
    with refused(FINALISED):
        sql(
            "INSERT INTO billing_invoiceline (invoice_id, item, tier, model, quantity, "
            "unit_price, amount, amount_minor, usage_from, usage_to, stripe_item_id) "
            "SELECT invoice_id, item, tier, model, quantity, unit_price, 100, 10000, "
            "usage_from, usage_to, '' FROM billing_invoiceline WHERE invoice_id = %s",
            finalised.pk,
        )
    # COPY, as the close writes drafts' lines.
    columns = "invoice_id, item, tier, model, quantity, unit_price, amount, amount_minor, "
    columns += "usage_from, usage_to, stripe_item_id"
    row = (finalised.pk, "output", "premium", "llama", 1, 1, 100, 10000, MONTH, NEXT_MONTH, "")
    copy_lines = f"COPY billing_invoiceline ({columns}) FROM STDIN"
    with refused(FINALISED), connection.cursor() as cursor, cursor.copy(copy_lines) as copy:
        copy.write_row(row)
    # The lines still add up to the invoice.
    assert lines_total(finalised) == [finalised.total_minor] == [5024]


def test_a_drafts_line_cannot_be_moved_into_a_finalised_invoice(
    invoices: tuple[Invoice, Invoice],
) -> None:
    finalised, draft = invoices
    line = draft.lines.get()
    with refused(FINALISED):
        InvoiceLine.objects.filter(pk=line.pk).update(invoice=finalised)
    with refused(FINALISED):
        line.invoice = finalised
        line.save()
    with refused(FINALISED):
        sql("UPDATE billing_invoiceline SET invoice_id = %s WHERE id = %s", finalised.pk, line.pk)
    assert lines_total(finalised) == [5024]


def test_a_finalised_invoices_lines_cannot_change_move_or_go(
    invoices: tuple[Invoice, Invoice],
) -> None:
    finalised, draft = invoices
    line = finalised.lines.get()
    for edit in (
        lambda: InvoiceLine.objects.filter(pk=line.pk).update(amount_minor=1),
        lambda: InvoiceLine.objects.filter(pk=line.pk).update(invoice=draft),
        # The mirror along with anything else is an edit.
        lambda: InvoiceLine.objects.filter(pk=line.pk).update(stripe_item_id="ii_1", quantity=2),
        lambda: InvoiceLine.objects.filter(pk=line.pk).delete(),
        lambda: sql("UPDATE billing_invoiceline SET amount_minor = 0 WHERE id = %s", line.pk),
        lambda: sql("DELETE FROM billing_invoiceline WHERE invoice_id = %s", finalised.pk),
    ):
        with refused(FINALISED):
            edit()
    assert lines_total(finalised) == [5024]


def test_a_finalised_invoice_cannot_change_or_go(invoices: tuple[Invoice, Invoice]) -> None:
    finalised, _ = invoices
    for edit in (
        lambda: Invoice.objects.filter(pk=finalised.pk).update(total_minor=15024),
        lambda: Invoice.objects.filter(pk=finalised.pk).update(status=Invoice.Status.DRAFT),
        lambda: Invoice.objects.filter(pk=finalised.pk).update(memo="edited"),
        lambda: sql("DELETE FROM billing_invoice WHERE id = %s", finalised.pk),
    ):
        with refused(FINALISED):
            edit()
    assert Invoice.objects.get(pk=finalised.pk).total_minor == 5024


def test_the_stripe_mirror_and_drafts_stay_writable(invoices: tuple[Invoice, Invoice]) -> None:
    finalised, draft = invoices
    paid = timezone.now()
    Invoice.objects.filter(pk=finalised.pk).update(
        stripe_invoice_id="in_1", payment=Invoice.Payment.PAID, paid_at=paid
    )
    InvoiceLine.objects.filter(invoice=finalised).update(stripe_item_id="ii_1")
    assert finalised.lines.get().stripe_item_id == "ii_1"
    assert Invoice.objects.get(pk=finalised.pk).paid_at == paid

    added = InvoiceLine.objects.create(**line_values(draft, 100))
    InvoiceLine.objects.filter(pk=added.pk).update(amount_minor=200)
    other = invoice_make(account_make("premium"), number=None)
    InvoiceLine.objects.filter(pk=added.pk).update(invoice=other)
    InvoiceLine.objects.filter(pk=added.pk).delete()
    InvoiceLine.objects.filter(invoice=draft).delete()
    draft.delete()
    assert lines_total(other) == [5024]


def test_a_credit_note_is_still_issued(invoices: tuple[Invoice, Invoice]) -> None:
    finalised, _ = invoices
    note = credit_note_issue(invoice=finalised, memo="goodwill", amount_minor=1000)
    assert (note.status, note.total_minor, lines_total(note)) == ("finalised", -1000, [-1000])
    with refused(FINALISED):
        InvoiceLine.objects.create(**line_values(note, -4024))


@pytest.fixture
def committed(transactional_db: None) -> Iterator[None]:
    """Invoices committed by the test, removed after it (Django's flush cannot: sealed)."""
    yield
    with seal_lifted():
        Invoice.objects.all().delete()


def test_a_line_cannot_slip_into_an_invoice_while_it_is_finalised(committed: None) -> None:
    draft = invoice_make(account_make("premium"), number=None)
    outcome: list[str] = []

    def line_add() -> None:  # another connection, while the finalising has not committed
        try:
            InvoiceLine.objects.create(**line_values(draft, 10_000))
            outcome.append("added")
        except IntegrityError as refusal:
            outcome.append(str(refusal))
        finally:
            connection.close()

    writer = threading.Thread(target=line_add)
    with transaction.atomic():
        Invoice.objects.filter(pk=draft.pk).update(
            number="TF-2025-000009", status=Invoice.Status.FINALISED, finalised_at=timezone.now()
        )
        writer.start()
        wait_until(lambda: outcome or _waiting_for_a_lock(), what="the line's writer to wait")
    writer.join(10)

    assert len(outcome) == 1 and FINALISED in outcome[0], outcome
    assert lines_total(draft) == [5024]


def _waiting_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(cursor.fetchone()[0])


# TRUNCATE, the counter, and replica mode ----------------------------------------------------

TRUNCATED = [
    "billing_invoice CASCADE",
    "billing_invoiceline",
    "billing_invoicenumber",
    "catalogue_price",
    "catalogue_planprice",
]


@pytest.mark.parametrize("table", TRUNCATED)
def test_nothing_billed_is_truncated(invoices: tuple[Invoice, Invoice], table: str) -> None:
    InvoiceNumber.objects.create(prefix="TF-2025-", last=1)
    with refused("cannot truncate .*: finalised invoices exist"):
        truncate(table)
    assert lines_total(invoices[0]) == [5024]
    assert InvoiceNumber.objects.get(prefix="TF-2025-").last == 1


def test_drafts_alone_may_be_truncated(db: None) -> None:
    """As Django's flush between tests does."""
    draft = invoice_make(account_make("premium"), number=None)
    truncate("billing_invoiceline, billing_invoice, billing_invoicenumber")
    assert not Invoice.objects.filter(pk=draft.pk).exists()


def test_the_number_counter_only_counts_up(db: None) -> None:
    InvoiceNumber.objects.create(prefix="TF-2025-", last=7)
    counter = InvoiceNumber.objects.filter(prefix="TF-2025-")
    for edit in (
        lambda: counter.update(last=6),
        lambda: counter.update(prefix="TF-2024-"),
        lambda: counter.delete(),
        lambda: sql("UPDATE billing_invoicenumber SET last = 0"),
        lambda: sql("DELETE FROM billing_invoicenumber"),
    ):
        with refused("invoice number counter TF-2025-"):
            edit()
    counter.update(last=9)
    assert counter.get().last == 9


def test_replica_mode_does_not_lift_the_seal(invoices: tuple[Invoice, Invoice]) -> None:
    finalised, draft = invoices
    InvoiceNumber.objects.create(prefix="TF-2025-", last=1)
    for edit, message in (
        (lambda: InvoiceLine.objects.create(**line_values(finalised, 10_000)), FINALISED),
        (lambda: draft.lines.update(invoice=finalised), FINALISED),
        (lambda: InvoiceLine.objects.filter(invoice=finalised).delete(), FINALISED),
        (lambda: Invoice.objects.filter(pk=finalised.pk).update(total_minor=1), FINALISED),
        (lambda: truncate("billing_invoiceline"), "finalised invoices exist"),
        (lambda: InvoiceNumber.objects.update(last=0), "only counts up"),
        (lambda: InvoiceNumber.objects.all().delete(), "cannot be deleted"),
    ):
        with refused(message):
            sql("SET LOCAL session_replication_role = replica")
            edit()
    assert lines_total(finalised) == [5024]


def test_the_owners_ddl_is_the_maintenance_path(invoices: tuple[Invoice, Invoice]) -> None:
    finalised, _ = invoices
    with seal_lifted():
        Invoice.objects.filter(pk=finalised.pk).delete()
    assert not Invoice.objects.filter(pk=finalised.pk).exists()
    # ... and the seal is back on afterwards.
    with refused(FINALISED):
        InvoiceLine.objects.create(**line_values(invoice_make(finalised.account, number="TF-2")))


# Price books in force -----------------------------------------------------------------------
# A book is sealed once the transaction that created it commits: these tests commit.

PRICE = {
    "tier": "premium",
    "input_per_million": Decimal(3),
    "cached_input_per_million": Decimal("0.3"),
    "output_per_million": Decimal(15),
}


def book_compose(currency: str, effective_from: Any) -> PriceBook:
    """A book with a price and a plan, created whole in one transaction."""
    with transaction.atomic():
        book = PriceBook.objects.create(
            name="list", currency=currency, effective_from=effective_from
        )
        Price.objects.create(price_book=book, model="*", **PRICE)
        PlanPrice.objects.create(price_book=book, tier="premium", monthly_fee=Decimal(20))
    return book


@pytest.fixture
def in_force(transactional_db: None) -> PriceBook:
    """A backdated book, composed in one transaction: that much is allowed."""
    book = book_compose(CURRENCY, MONTH)
    assert (book.prices.count(), book.plans.count()) == (1, 1)
    return book


@pytest.fixture
def draft(transactional_db: None) -> PriceBook:
    return book_compose(CURRENCY, timezone.now() + timedelta(days=30))


def book_edits(book: PriceBook) -> list[Callable[[], object]]:
    price, plan = book.prices.get(), book.plans.get()
    return [
        lambda: Price.objects.create(price_book=book, model="llama", **PRICE),
        lambda: PlanPrice.objects.create(price_book=book, tier="free"),
        lambda: Price.objects.filter(pk=price.pk).update(output_per_million=Decimal(1)),
        lambda: PlanPrice.objects.filter(pk=plan.pk).update(included_tokens=10**9),
        lambda: Price.objects.filter(pk=price.pk).delete(),
        lambda: PlanPrice.objects.filter(pk=plan.pk).delete(),
        lambda: sql(
            "INSERT INTO catalogue_price (price_book_id, tier, model, input_per_million, "
            "cached_input_per_million, output_per_million, request_fee) "
            "VALUES (%s, 'free', '*', 0, 0, 0, 0)",
            book.pk,
        ),
        lambda: sql("UPDATE catalogue_price SET request_fee = 1 WHERE price_book_id = %s", book.pk),
        lambda: sql("DELETE FROM catalogue_planprice WHERE price_book_id = %s", book.pk),
    ]


def test_a_book_in_forces_prices_and_plans_cannot_change(in_force: PriceBook) -> None:
    for edit in book_edits(in_force):
        with refused(f"price book {in_force.pk} {IN_FORCE}"):
            edit()
    assert in_force.prices.get().output_per_million == Decimal(15)
    assert in_force.plans.get().monthly_fee == Decimal(20)


def test_a_price_cannot_move_into_or_out_of_a_book_in_force(
    in_force: PriceBook, draft: PriceBook
) -> None:
    with refused(IN_FORCE):
        draft.prices.update(price_book=in_force)
    with refused(IN_FORCE):
        in_force.plans.update(price_book=draft)
    assert (in_force.prices.count(), draft.prices.count()) == (1, 1)


def test_a_book_in_force_cannot_change_or_go(in_force: PriceBook) -> None:
    books = PriceBook.objects.filter(pk=in_force.pk)
    for edit in (
        lambda: books.update(effective_from=MONTH + timedelta(days=1)),
        lambda: books.update(effective_from=timezone.now() + timedelta(days=1)),
        lambda: books.update(currency="EUR"),
        # Any update, since it would make the row the updating transaction's own.
        lambda: books.update(name="renamed"),
        lambda: sql("DELETE FROM catalogue_price WHERE price_book_id = %s", in_force.pk),
        lambda: sql("DELETE FROM catalogue_pricebook WHERE id = %s", in_force.pk),
    ):
        with refused(IN_FORCE):
            edit()
    assert books.get().effective_from == MONTH


def test_replica_mode_does_not_unseal_a_book(in_force: PriceBook) -> None:
    for edit in book_edits(in_force):
        with refused(IN_FORCE):
            sql("SET LOCAL session_replication_role = replica")
            edit()


def test_a_backdated_book_is_composed_in_its_own_transaction_not_after(
    transactional_db: None,
) -> None:
    book = PriceBook.objects.create(name="late", currency=CURRENCY, effective_from=MONTH)
    with refused(IN_FORCE):
        Price.objects.create(price_book=book, model="*", **PRICE)
    # Savepoints (nested atomic blocks) are the same transaction.
    with transaction.atomic():
        with transaction.atomic():
            start = MONTH + timedelta(days=1)
            nested = PriceBook.objects.create(name="n", currency=CURRENCY, effective_from=start)
        with transaction.atomic():
            Price.objects.create(price_book=nested, model="*", **PRICE)
            PriceBook.objects.filter(pk=nested.pk).update(name="nested")
    assert nested.prices.count() == 1


def test_a_book_not_in_force_stays_writable(draft: PriceBook) -> None:
    for edit in book_edits(draft):
        edit()
    PriceBook.objects.filter(pk=draft.pk).update(
        effective_from=draft.effective_from + timedelta(days=1)
    )
    # ... but it does not come into force by an update: that would reprice past usage.
    with refused("can only move to a later start"):
        PriceBook.objects.filter(pk=draft.pk).update(effective_from=MONTH)
    draft.prices.all().delete()
    draft.plans.all().delete()
    draft.delete()
    assert not PriceBook.objects.filter(pk=draft.pk).exists()
