"""The owner's maintenance path round the seal (billing/migrations/0006_seal.py,
catalogue/migrations/0003_seal.py): benchmarks that reset their database and tests that commit
clean up with it. Nothing in the service lifts the seal."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction

# Every table with a trigger of the seal: finalised invoices, their lines, the number counter,
# price books in force and their rows.
SEALED = (
    "billing_invoice",
    "billing_invoiceline",
    "billing_invoicenumber",
    "catalogue_pricebook",
    "catalogue_price",
    "catalogue_planprice",
)
MODES = {"A": "ENABLE ALWAYS", "O": "ENABLE", "R": "ENABLE REPLICA", "D": "DISABLE"}


@contextmanager
def seal_lifted() -> Iterator[None]:
    """The sealed tables' triggers off for one transaction, then back exactly as they were.

    The triggers fire ALWAYS (session_replication_role does not lift them), so this explicit
    DDL, which locks the tables until the transaction ends, is the one way round them.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger "
            "WHERE tgrelid = ANY(%s::regclass[]) AND NOT tgisinternal",
            [list(SEALED)],
        )
        triggers = cursor.fetchall()
        # ALTER TABLE refuses to run with deferred checks pending: run them first.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for table in SEALED:
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for table, name, mode in triggers:
            cursor.execute(f'ALTER TABLE {table} {MODES[mode]} TRIGGER "{name}"')
