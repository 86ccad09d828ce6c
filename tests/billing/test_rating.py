"""Rating: the rule as finance reads it, and the jobs' SQL holding to the Python reference."""

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.rating import Book, PriceList, Quantities, Terms, cover_included, rate
from billing.selectors import price_list, usage_rated
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    book_create,
    books_in_month,
    records_in_month,
    rolled_back,
    usage_write,
)

TERMS = Terms(
    input_per_million=Decimal("3"),
    cached_input_per_million=Decimal("0.3"),
    output_per_million=Decimal("15"),
    request_fee=Decimal("0.001"),
)


def test_it_prices_each_token_class() -> None:
    quantities = Quantities.of(prompt=1_000_000, cached=400_000, completion=2000, reasoning=500)
    rated = rate(quantities, TERMS)
    assert rated.input == Decimal("1.8")
    assert rated.cached_input == Decimal("0.12")
    assert rated.output == Decimal("0.0225")
    assert rated.reasoning == Decimal("0.0075")  # at the output price: not priced apart
    assert rated.request_fee == Decimal("0.001")
    assert rated.total == Decimal("1.951")


def test_it_prices_reasoning_apart_when_the_book_does() -> None:
    terms = Terms(Decimal(3), Decimal("0.3"), Decimal(15), reasoning_per_million=Decimal(60))
    rated = rate(Quantities.of(prompt=0, cached=0, completion=1000, reasoning=1000), terms)
    assert (rated.output, rated.reasoning) == (Decimal(0), Decimal("0.06"))


def test_it_is_exact_for_one_token() -> None:
    terms = Terms(Decimal("0.000001"), Decimal(0), Decimal(0))
    assert rate(Quantities(input=1), terms).input == Decimal("0.000000000001")


def test_it_falls_back_to_the_tiers_star_row_and_else_leaves_usage_unpriced() -> None:
    star = Terms(Decimal(1), Decimal(1), Decimal(1))
    book = Book(1, MONTH, prices={("premium", "llama"): TERMS, ("premium", "*"): star})
    prices = PriceList([book])
    one = Quantities(input=1_000_000)
    assert prices.rate(tier="premium", model="llama", at=MONTH, quantities=one) == (
        1,
        rate(one, TERMS),
    )
    assert prices.rate(tier="premium", model="qwen", at=MONTH, quantities=one) == (
        1,
        rate(one, star),
    )
    assert prices.rate(tier="free", model="llama", at=MONTH, quantities=one) is None
    before = MONTH - timedelta(microseconds=1)
    assert prices.rate(tier="premium", model="llama", at=before, quantities=one) is None


def test_the_book_in_force_is_the_latest_started() -> None:
    old, new = Book(1, MONTH - timedelta(days=30)), Book(2, MONTH)
    prices = PriceList([new, old])
    assert prices.book_at(MONTH - timedelta(microseconds=1)) is old
    assert prices.book_at(MONTH) is new
    assert prices.book_end(old) == MONTH
    assert prices.book_end(new) is None


def test_included_tokens_go_to_requests_in_order_and_classes_in_order() -> None:
    first = Quantities.of(prompt=600, cached=100, completion=300, reasoning=100, requests=1)
    second = Quantities.of(prompt=500, cached=0, completion=0, reasoning=0, requests=1)
    covered = cover_included([first, second], allowance=1000)
    assert covered[0] == Quantities(input=500, cached_input=100, output=200, reasoning=100)
    assert covered[1] == Quantities(input=100)
    assert cover_included([first, second], allowance=0) == [Quantities(), Quantities()]


@pytest.mark.django_db
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(books=books_in_month(), records=records_in_month(), data=st.data())
def test_sql_rates_every_record_as_python_does(
    books: list[Any], records: list[dict[str, Any]], data: Any
) -> None:
    with rolled_back():
        for spec in books:
            book_create(spec)
        # Some records before any book: unpriced in both.
        records.append(
            dict(
                records[0], request_id=data.draw(st.uuids()), started_at=MONTH - timedelta(days=60)
            )
        )
        usage_write(records)
        reference = price_list(currency="USD")
        rated = {
            r.request_id: r for r in usage_rated(since=MONTH - timedelta(days=61), until=NEXT_MONTH)
        }
        assert len(rated) == len(records)
        for record in records:
            expected = reference.rate(
                tier=record["tier"],
                model=record["model"],
                at=record["started_at"],
                quantities=Quantities.of(
                    prompt=record["prompt_tokens"],
                    cached=record["cached_prompt_tokens"],
                    completion=record["completion_tokens"],
                    reasoning=record["reasoning_tokens"],
                ),
            )
            got = rated[str(record["request_id"])]
            if expected is None:
                assert got.price_book_id is None and got.total == 0
                continue
            book_id, amounts = expected
            assert got.price_book_id == book_id
            assert (got.input, got.cached_input, got.output, got.reasoning, got.request_fee) == (
                amounts.input,
                amounts.cached_input,
                amounts.output,
                amounts.reasoning,
                amounts.request_fee,
            )
