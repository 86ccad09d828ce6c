"""The SQL definition of the book in force and its price row (catalogue_book_span and
catalogue_price_in_force, catalogue/migrations/0002) agrees with billing/rating.py."""

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.rating import Terms
from billing.selectors import price_list
from tests.billing.factories import MODELS, MONTH, TIERS, book_create, book_specs, rolled_back

CURRENCIES = ("USD", "EUR")
_PROBE = """
SELECT b.id, nullif(b.effective_to, 'infinity'), p.id, p.input_per_million,
       p.cached_input_per_million, p.output_per_million, p.reasoning_per_million, p.request_fee
FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[])
    WITH ORDINALITY AS q(currency, tier, model, at, n)
LEFT JOIN catalogue_book_span b ON b.currency = q.currency
    AND q.at >= b.effective_from AND q.at < b.effective_to
LEFT JOIN LATERAL catalogue_price_in_force(b.id, q.tier, q.model) p ON true
ORDER BY q.n
"""
MICRO = timedelta(microseconds=1)


@st.composite
def catalogues(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Several books per currency (starts unique within a currency, shared across them)."""
    books = []
    for currency in CURRENCIES:
        days = draw(st.lists(st.integers(0, 40), min_size=0, max_size=4, unique=True))
        for day in days:
            start = MONTH + timedelta(days=day, hours=draw(st.integers(0, 23)))
            books.append((currency, draw(book_specs(start))))
    return books


@pytest.mark.django_db
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(books=catalogues(), extra=st.lists(st.integers(-2, 50), max_size=5))
def test_the_sql_book_and_price_in_force_are_ratings(
    books: list[tuple[str, Any]], extra: list[int]
) -> None:
    with rolled_back():
        for currency, spec in books:
            book_create(spec, currency=currency)
        # At, just before and just after every start, and days apart.
        instants: set[datetime] = {MONTH - timedelta(days=1)}
        for _, spec in books:
            instants |= {
                spec.effective_from - MICRO,
                spec.effective_from,
                spec.effective_from + MICRO,
            }
        instants |= {MONTH + timedelta(days=day) for day in extra}
        probes = [
            (currency, tier, model, at)
            for currency in (*CURRENCIES, "GBP")
            for tier in (*TIERS, "other")
            for model in (*MODELS, "*")
            for at in sorted(instants)
        ]
        with connection.cursor() as cursor:
            cursor.execute(_PROBE, [list(column) for column in zip(*probes, strict=True)])
            rows = cursor.fetchall()
        assert len(rows) == len(probes)
        lists = {currency: price_list(currency=currency) for currency in (*CURRENCIES, "GBP")}
        for (currency, tier, model, at), row in zip(probes, rows, strict=True):
            book_id, effective_to, price_id, *numbers = row
            reference = lists[currency]
            book = reference.book_at(at)
            assert book_id == (book.id if book else None), (currency, at)
            if book is None:
                assert price_id is None
                continue
            # Until the next book of the currency takes over ('infinity' read as None).
            assert effective_to == reference.book_end(book)
            terms = book.terms(tier, model)
            assert (Terms(*numbers) if price_id is not None else None) == terms, (tier, model)
