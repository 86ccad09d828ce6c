"""The rounding rule: an invoice's lines add up to its total exactly, each within a unit."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import (
    allocate,
    from_minor,
    minor_exponent,
    minor_text,
    money_text,
    per_million,
    to_minor,
)

# Unrounded amounts as rating makes them: 12 places, positive or (credits) negative.
amounts = st.decimals(
    min_value=Decimal("-100000"), max_value=Decimal("100000"), places=12, allow_nan=False
)
currencies = st.sampled_from(["USD", "EUR", "JPY", "KWD"])


def test_it_knows_minor_units() -> None:
    assert [minor_exponent(c) for c in ("USD", "eur", "JPY", "KWD")] == [2, 2, 0, 3]


def test_it_rounds_half_to_even() -> None:
    assert to_minor(Decimal("0.125"), "USD") == 12
    assert to_minor(Decimal("0.135"), "USD") == 14
    assert to_minor(Decimal("-0.125"), "USD") == -12
    assert to_minor(Decimal("2.5"), "JPY") == 2
    assert to_minor(Decimal("0.1250000001"), "USD") == 13


def test_it_rounds_the_total_not_each_line() -> None:
    # Three lines of a third of a cent: each alone rounds to 0, together they are one cent.
    third = Decimal("0.003333333333")
    assert allocate([third, third, third], "USD").total_minor == 1
    assert allocate([third, third, third], "USD").lines_minor == (1, 0, 0)


def test_it_gives_the_extra_unit_to_the_largest_remainder() -> None:
    allocation = allocate([Decimal("1.004"), Decimal("2.007"), Decimal("0.001")], "USD")
    assert allocation.total_minor == 301
    assert allocation.lines_minor == (100, 201, 0)


def test_it_allocates_credit_notes_negative() -> None:
    allocation = allocate([Decimal("-1.005"), Decimal("-2.005")], "USD")
    assert allocation.total_minor == -301
    assert sum(allocation.lines_minor) == -301


def test_an_empty_invoice_is_zero() -> None:
    assert allocate([], "USD").total_minor == 0


def test_it_averages_a_unit_price_per_million() -> None:
    assert per_million(Decimal("0.3"), 1_000_000) == Decimal("0.300000")
    assert per_million(Decimal("1"), 3) == Decimal("333333.333333")
    assert per_million(Decimal("5"), 0) == 0


@given(st.lists(amounts, max_size=40), currencies)
def test_lines_sum_exactly_to_the_rounded_total(values: list[Decimal], currency: str) -> None:
    allocation = allocate(values, currency)
    assert sum(allocation.lines_minor) == allocation.total_minor
    assert allocation.total_minor == to_minor(sum(values, Decimal(0)), currency)


@given(st.lists(amounts, max_size=40), currencies)
def test_each_line_is_within_one_unit_of_its_amount(values: list[Decimal], currency: str) -> None:
    allocation = allocate(values, currency)
    assert len(allocation.lines_minor) == len(values)
    for value, minor in zip(values, allocation.lines_minor, strict=True):
        assert abs(from_minor(minor, currency) - value) < from_minor(1, currency)
        assert abs(minor - to_minor(value, currency)) <= 1


@given(amounts, currencies)
def test_one_line_is_its_own_rounding(value: Decimal, currency: str) -> None:
    assert allocate([value], currency).lines_minor == (to_minor(value, currency),)


@given(st.integers(min_value=-(10**15), max_value=10**15), currencies)
def test_minor_units_round_trip(minor: int, currency: str) -> None:
    assert to_minor(from_minor(minor, currency), currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency", "places", "text"),
    [
        ("1341.5", "USD", None, "$1,341.50"),
        ("-13.406", "EUR", None, "-€13.41"),
        ("1341.5", "JPY", None, "¥1,342"),
        ("0.125", "USD", None, "$0.12"),  # half to even, the invoices' rule
        ("0E-12", "USD", None, "$0.00"),
        ("0.0026", "USD", 4, "$0.0026"),
        ("1234567.891", "KWD", None, "KWD1,234,567.891"),
    ],
)
def test_money_reads_as_money(amount: str, currency: str, places: int | None, text: str) -> None:
    assert money_text(Decimal(amount), currency, places=places) == text


@given(st.integers(-(10**15), 10**15), st.sampled_from(["USD", "EUR", "JPY", "KWD"]))
def test_minor_units_read_back_as_the_same_amount(minor: int, currency: str) -> None:
    digits = "".join(c for c in minor_text(minor, currency) if c.isdigit())
    assert int(digits) == abs(minor)
