"""Rating: what usage is worth at list prices (docs/billing.md, "Rating").

A pure function of an immutable usage record and the price book in force when it started:

    input        = (prompt - cached) tokens x input_per_million / 1e6
    cached_input = cached tokens x cached_input_per_million / 1e6
    output       = (completion - reasoning) tokens x output_per_million / 1e6
    reasoning    = reasoning tokens x (reasoning_per_million, else output_per_million) / 1e6
    request_fee  = requests x request_fee  (none for a request that failed on every backend)

The price row is the book's (tier, model) row, else its (tier, "*") row; without either the
usage is unpriced (worth nothing, and reported). Amounts are exact Decimals: a price has 6
places and multiplying by 1e-6 adds 6, so nothing is rounded here. The jobs apply the same rule
in SQL (billing/sql/); this module is the reference the tests hold them to, and what invoices
and previews build their lines with.
"""

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal, localcontext

from billing.money import CONTEXT
from metering.events import FEE_EXEMPT_OUTCOMES

PER_TOKEN = Decimal("0.000001")
# Token classes in the order a request's tokens use its plan's included tokens.
TOKEN_ITEMS = ("input", "cached_input", "output", "reasoning")
ITEMS = (*TOKEN_ITEMS, "request_fee")
# Outcomes that pay no request fee (metering.events), as the SQL's `fee_exempt` parameter.
FEE_EXEMPT = sorted(FEE_EXEMPT_OUTCOMES)


def fee_requests(outcome: str) -> int:
    """The requests a record pays a fee for: none when it failed on every backend."""
    return 0 if outcome in FEE_EXEMPT_OUTCOMES else 1


@dataclass(frozen=True, slots=True)
class Quantities:
    """Billable quantities per class: tokens of each class, and requests."""

    input: int = 0
    cached_input: int = 0
    output: int = 0
    reasoning: int = 0
    request_fee: int = 0

    @classmethod
    def of(
        cls, *, prompt: int, cached: int, completion: int, reasoning: int, requests: int = 1
    ) -> "Quantities":
        """From the ledger's counts: cached is part of prompt, reasoning part of completion."""
        return cls(prompt - cached, cached, completion - reasoning, reasoning, requests)

    @property
    def tokens(self) -> int:
        return self.input + self.cached_input + self.output + self.reasoning

    def __add__(self, other: "Quantities") -> "Quantities":
        return Quantities(*(getattr(self, f) + getattr(other, f) for f in ITEMS))

    def items(self) -> Iterator[tuple[str, int]]:
        return ((item, getattr(self, item)) for item in ITEMS)


@dataclass(frozen=True, slots=True)
class Terms:
    """One price row's numbers: per million tokens of each class, and per request."""

    input_per_million: Decimal
    cached_input_per_million: Decimal
    output_per_million: Decimal
    reasoning_per_million: Decimal | None = None
    request_fee: Decimal = Decimal(0)

    @classmethod
    def of(cls, price: object) -> "Terms":
        """From a Price row (or anything with its fields)."""
        return cls(*(getattr(price, f.name) for f in fields(cls)))

    def unit_price(self, item: str) -> Decimal:
        """Per million tokens for a token class, per request for the request fee."""
        if item == "reasoning":
            return (
                self.output_per_million
                if self.reasoning_per_million is None
                else (self.reasoning_per_million)
            )
        if item == "request_fee":
            return self.request_fee
        return getattr(self, f"{item}_per_million")  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Rated:
    """Unrounded amounts per class."""

    input: Decimal
    cached_input: Decimal
    output: Decimal
    reasoning: Decimal
    request_fee: Decimal

    @property
    def total(self) -> Decimal:
        with localcontext(CONTEXT):
            return self.input + self.cached_input + self.output + self.reasoning + self.request_fee


def rate(quantities: Quantities, terms: Terms) -> Rated:
    """The list price of `quantities` under `terms`; exact."""
    with localcontext(CONTEXT):
        return Rated(
            *(
                quantity * terms.unit_price(item) * (1 if item == "request_fee" else PER_TOKEN)
                for item, quantity in quantities.items()
            )
        )


def cover_included(usage: Iterable[Quantities], allowance: int) -> list[Quantities]:
    """The tokens of each request that a plan's `allowance` covers, requests in order.

    Requests use the allowance in the order given (started_at, request_id), and within a
    request its classes in TOKEN_ITEMS order, until it runs out.
    """
    covered = []
    left = allowance
    for quantities in usage:
        taken = {}
        for item in TOKEN_ITEMS:
            taken[item] = min(getattr(quantities, item), left)
            left -= taken[item]
        covered.append(Quantities(**taken))
    return covered


@dataclass(frozen=True, slots=True)
class Plan:
    monthly_fee: Decimal
    included_tokens: int


@dataclass(frozen=True)
class Book:
    id: int
    effective_from: datetime
    prices: dict[tuple[str, str], Terms] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)

    def terms(self, tier: str, model: str) -> Terms | None:
        """The (tier, model) row, else the tier's "*" row, else none (unpriced)."""
        return self.prices.get((tier, model)) or self.prices.get((tier, "*"))


class PriceList:
    """Every price book of one currency, in order: which is in force when, at what prices."""

    def __init__(self, books: Iterable[Book]) -> None:
        self.books = sorted(books, key=lambda book: book.effective_from)
        self._starts = [book.effective_from for book in self.books]

    def book_at(self, at: datetime) -> Book | None:
        """The book in force at `at`: the latest to take effect at or before it."""
        index = bisect.bisect_right(self._starts, at)
        return self.books[index - 1] if index else None

    def book(self, book_id: int) -> Book:
        return next(book for book in self.books if book.id == book_id)

    def book_end(self, book: Book) -> datetime | None:
        """When the next book takes over from `book`; None while it is the latest."""
        index = self.books.index(book) + 1
        return self.books[index].effective_from if index < len(self.books) else None

    def rate(
        self, *, tier: str, model: str, at: datetime, quantities: Quantities
    ) -> tuple[int, Rated] | None:
        """(book id, amounts) of usage that started at `at`; None when it is unpriced."""
        book = self.book_at(at)
        terms = book.terms(tier, model) if book else None
        if book is None or terms is None:
            return None
        return book.id, rate(quantities, terms)
