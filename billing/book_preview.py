"""What a price book would have charged last month: last month's usage per tier and model at
the book's prices, beside what it was rated at the books in force then.

List prices only, by the rating rule (docs/billing.md, "Rating"; billing/sql/book_preview.sql):
before a plan's included tokens and without plan fees, which an invoice adds per account.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing.jobs import month_start
from billing.money import total_of
from billing.rating import FEE_EXEMPT
from catalogue.models import PriceBook
from config.db_routing import reading

_BOOK_PREVIEW = (Path(__file__).parent / "sql" / "book_preview.sql").read_text()


@dataclass(frozen=True, slots=True)
class PreviewLine:
    """One tier and model: its requests and tokens, and their amounts (exact, unrounded)."""

    tier: str
    model: str
    requests: int
    tokens: int
    # Requests without a price row (worth nothing) then, and at the book's prices.
    rated_unpriced: int
    book_unpriced: int
    rated: Decimal
    book: Decimal

    @property
    def difference(self) -> Decimal:
        return total_of([self.book, -self.rated])


@dataclass(frozen=True, slots=True)
class BookPreview:
    book: PriceBook
    since: datetime
    until: datetime
    lines: list[PreviewLine]

    @property
    def rated(self) -> Decimal:
        return total_of(line.rated for line in self.lines)

    @property
    def total(self) -> Decimal:
        """What the book would have charged."""
        return total_of(line.book for line in self.lines)

    @property
    def difference(self) -> Decimal:
        return total_of([self.total, -self.rated])


def last_month(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month before the one holding `now`: [since, until)."""
    until = month_start(now)
    return month_start(until - timedelta(days=1)), until


def book_preview(*, book: PriceBook, now: datetime) -> BookPreview:
    """Last month's usage at `book`'s prices, against what it was rated in the book's currency."""
    since, until = last_month(now)
    params: dict[str, Any] = {
        "since": since,
        "until": until,
        "currency": book.currency,
        "book_id": book.pk,
        "fee_exempt": FEE_EXEMPT,
    }
    with reading().cursor() as cursor:
        cursor.execute(_BOOK_PREVIEW, params)
        lines = [PreviewLine(*row) for row in cursor.fetchall()]
    return BookPreview(book, since, until, lines)
