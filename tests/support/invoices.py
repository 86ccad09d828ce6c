"""Invoices in tests that commit: the seal on finalised invoices lifted for their clean-up."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction


@contextmanager
def seal_lifted() -> Iterator[None]:
    """The owner's maintenance path: the invoices' triggers off for one transaction, then
    back exactly as they were."""
    tables = ("billing_invoice", "billing_invoiceline")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger "
            "WHERE tgrelid = ANY(%s::regclass[]) AND NOT tgisinternal",
            [list(tables)],
        )
        triggers = cursor.fetchall()
        for table in tables:
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred checks first, then DDL
        modes = {"A": "ENABLE ALWAYS", "O": "ENABLE", "R": "ENABLE REPLICA", "D": "DISABLE"}
        for table, name, mode in triggers:
            cursor.execute(f'ALTER TABLE {table} {modes[mode]} TRIGGER "{name}"')
