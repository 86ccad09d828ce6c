"""A price book's preview: last month's usage at the book's prices, beside what it was rated."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billing.book_preview import book_preview, last_month
from billing.selectors import usage_rated
from tests.billing.factories import (
    MONTH,
    NEXT_MONTH,
    BookSpec,
    PriceSpec,
    book_create,
    usage,
    usage_write,
)

pytestmark = pytest.mark.django_db
NOW = NEXT_MONTH + timedelta(days=14, hours=3)  # 15 April: last month is MONTH, March 2025
OLD = PriceSpec("premium", "*", Decimal(1), Decimal("0.1"), Decimal(2), fee=Decimal("0.001"))
MID_MONTH = PriceSpec("premium", "*", Decimal("1.5"), Decimal("0.2"), Decimal(3))
FREE = PriceSpec("free", "*", Decimal("0.5"), Decimal(0), Decimal(1))
LLAMA = PriceSpec(
    "premium", "llama", Decimal("2.25"), Decimal("0.3"), Decimal(4), Decimal(8), Decimal("0.002")
)
ANY = PriceSpec("premium", "*", Decimal("1.75"), Decimal("0.25"), Decimal("3.5"))


def by_hand(record: dict[str, Any], price: PriceSpec | None) -> Decimal:
    """docs/billing.md, "Rating", written out."""
    if price is None:
        return Decimal(0)
    million = Decimal(1_000_000)
    reasoning = price.output if price.reasoning is None else price.reasoning
    fee = Decimal(0) if record["outcome"] == "backend_error" else price.fee
    return (
        (record["prompt_tokens"] - record["cached_prompt_tokens"]) * price.input / million
        + record["cached_prompt_tokens"] * price.cached / million
        + (record["completion_tokens"] - record["reasoning_tokens"]) * price.output / million
        + record["reasoning_tokens"] * reasoning / million
        + fee
    )


def test_last_month_is_the_utc_calendar_month_before_now() -> None:
    assert last_month(NOW) == (MONTH, NEXT_MONTH)
    assert last_month(datetime(2025, 1, 1, 0, 0, tzinfo=UTC)) == (
        datetime(2024, 12, 1, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
    )


def test_it_rates_last_months_records_at_the_books_prices() -> None:
    book_create(BookSpec(MONTH - timedelta(days=31), [OLD, FREE]))
    book_create(BookSpec(MONTH + timedelta(days=15), [MID_MONTH, FREE]))
    previewed = book_create(BookSpec(datetime(2030, 1, 1, tzinfo=UTC), [LLAMA, ANY]))
    early, late = MONTH + timedelta(days=2), MONTH + timedelta(days=20)
    llama = [
        usage(early, prompt=12_345, cached=2_000, completion=6_789, reasoning=1_234),
        usage(late, prompt=777, cached=0, completion=5, reasoning=0),
        {**usage(late, prompt=400, completion=0), "outcome": "backend_error"},
    ]
    qwen = [usage(early, model="qwen", prompt=1_001, cached=1, completion=999, reasoning=3)]
    free = [usage(late, tier="free", prompt=50_000, completion=20_000)]
    outside = [
        usage(MONTH - timedelta(microseconds=1), prompt=10**6),
        usage(NEXT_MONTH, prompt=10**6),
    ]
    usage_write([*llama, *qwen, *free, *outside])

    preview = book_preview(book=previewed, now=NOW)

    def then(record: dict[str, Any]) -> Decimal:
        if record["tier"] == "free":
            return by_hand(record, FREE)
        mid_month = record["started_at"] >= MONTH + timedelta(days=15)
        return by_hand(record, MID_MONTH if mid_month else OLD)

    lines = {(line.tier, line.model): line for line in preview.lines}
    assert sorted(lines) == [("free", "llama"), ("premium", "llama"), ("premium", "qwen")]
    assert lines["premium", "llama"].book == sum(by_hand(r, LLAMA) for r in llama)
    assert lines["premium", "llama"].rated == sum(then(r) for r in llama)
    assert lines["premium", "qwen"].book == by_hand(qwen[0], ANY)
    assert lines["premium", "qwen"].rated == then(qwen[0])
    assert lines["free", "llama"].book == Decimal(0)
    assert lines["free", "llama"].book_unpriced == 1
    assert lines["free", "llama"].rated == by_hand(free[0], FREE)
    assert lines["premium", "llama"].requests == 3
    assert lines["premium", "llama"].tokens == 12_345 + 6_789 + 777 + 5 + 400
    assert preview.total == sum(by_hand(r, LLAMA) for r in llama) + by_hand(qwen[0], ANY)
    assert preview.rated == sum(then(r) for r in [*llama, *qwen, *free])
    assert preview.difference == preview.total - preview.rated
    # "Rated" is what the ledger's own rating made of the month.
    assert preview.rated == sum(r.total for r in usage_rated(since=MONTH, until=NEXT_MONTH))
    # One line worked out on paper: 1,000 input x 1.75 + 1 cached x 0.25 + 996 output x 3.5
    # + 3 reasoning x 3.5 (priced as output) per million, and no fee.
    assert lines["premium", "qwen"].book == Decimal("0.00524675")


def test_a_month_without_usage_previews_nothing() -> None:
    book = book_create(BookSpec(MONTH, [OLD]))

    preview = book_preview(book=book, now=NOW)

    assert preview.lines == []
    assert preview.total == preview.rated == Decimal(0)
