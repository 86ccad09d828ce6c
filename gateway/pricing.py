"""The prices in force, for the gateway's spend counter (budgets' hard caps).

A per-process copy of the price books in force now and later, re-read from PostgreSQL every
PRICES_REFRESH_SECONDS by a background task like the backend list, so pricing a request costs
dictionary lookups and integer arithmetic, never a query.

The rule is billing's (docs/billing.md, "Rating"): input = (prompt - cached) x input price,
cached x cached price, output = (completion - reasoning) x output price, reasoning x (reasoning
price or output price), + the request fee (none for a request that failed on every backend,
metering.events.FEE_EXEMPT_OUTCOMES); the price row of (tier, model), else (tier, "*"), of the
book in force when the request starts, in billing's currency. Amounts are exact integers: a
price per million tokens has 6 decimal places, so it is a whole number of 10^-12 currency
units ("pico-units") per token, and a request's cost in pico-units equals billing's unrounded
12-place amount. The spend counter in Redis holds pico-units too, so it is the exact sum the
invoice rounds once; nothing is rounded here.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from customers.models import HARD_CAP_MOST
from metering.events import FEE_EXEMPT_OUTCOMES

log = logging.getLogger(__name__)

# The currency when a caller names none (the gateway passes settings.BILLING.currency).
DEFAULT_CURRENCY = "USD"
# Pico-units per unit of the currency.
PICO = 10**12
# Redis counts in signed 64-bit integers: INCRBY fails past 2^63 - 1 pico-units, about 9.2
# million of the currency. The counter saturates before that: at SPEND_CEILING it takes no
# more (a hard cap is at most the ceiling, so a capped account is refused there), and no one
# request adds more than REQUEST_MOST, so it never passes SPEND_CEILING + REQUEST_MOST < 2^63.
SPEND_CEILING = HARD_CAP_MOST * PICO
REQUEST_MOST = 100_000 * PICO
_PICO_PER_MICRO = 10**6
_MONTH_SPEND = (Path(__file__).parent / "sql" / "month_spend.sql").read_text()
# Every book in force now or later, with its prices (a book without any is still in force):
# those whose span (catalogue_book_span, catalogue/migrations/0002) has not ended.
_PRICES_SQL = """
SELECT b.id, b.currency, b.effective_from, p.tier, p.model, p.input_per_million,
       p.cached_input_per_million, p.output_per_million, p.reasoning_per_million, p.request_fee
FROM catalogue_book_span b
LEFT JOIN catalogue_price p ON p.price_book_id = b.id
WHERE b.effective_to > now()
ORDER BY b.currency, b.effective_from
"""
# Accounts whose budget is in another currency than the counter's, already logged.
_FOREIGN_BUDGETS: set[int] = set()


@dataclass(frozen=True, slots=True)
class Rate:
    """One price row, in pico-units (10^-12 of the currency) per token and per request."""

    book_id: int
    input: int
    cached: int
    output: int
    reasoning: int
    fee: int

    def cost(
        self, *, prompt: int, cached: int, completion: int, reasoning: int, requests: int = 1
    ) -> int:
        """What a request with these token counts costs, in pico-units, exactly; `requests`
        is how many pay the request fee."""
        return (
            (prompt - cached) * self.input
            + cached * self.cached
            + (completion - reasoning) * self.output
            + reasoning * self.reasoning
            + requests * self.fee
        )

    def cost_of(self, record: Mapping[str, Any]) -> int:
        """What a usage record costs: its tokens, and the fee unless it failed on every
        backend (FEE_EXEMPT_OUTCOMES)."""
        return self.cost(
            prompt=record["prompt_tokens"],
            cached=record["cached_prompt_tokens"],
            completion=record["completion_tokens"],
            reasoning=record["reasoning_tokens"],
            requests=0 if record["outcome"] in FEE_EXEMPT_OUTCOMES else 1,
        )

    def most(self, *, prompt: int, completion: int) -> int:
        """The most a request can cost: every token at the dearest price of its side (prompt:
        input or cached; completion: output or reasoning), and the fee, in pico-units."""
        return (
            prompt * max(self.input, self.cached)
            + completion * max(self.output, self.reasoning)
            + self.fee
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """An account's monthly budget as the gateway enforces it."""

    monthly_limit: Decimal
    currency: str
    hard_cap: bool

    def cap_in(self, currency: str, *, account_id: int) -> int | None:
        """The hard cap in pico-units of `currency` (the counter's, billing's), or None when
        the budget only alerts. A negative limit caps at zero; one past the counter's range
        caps at its ceiling.

        A budget in another currency (written before budgets had to be in billing's) cannot
        be compared with the counter without an exchange rate: it is not enforced, and that is
        logged once per account and process.
        """
        if not self.hard_cap:
            return None
        if self.currency != currency:
            _foreign_budget_note(account_id, self.currency, currency)
            return None
        return min(max(0, int(self.monthly_limit * PICO)), SPEND_CEILING)


def _foreign_budget_note(account_id: int, budget_currency: str, currency: str) -> None:
    if account_id not in _FOREIGN_BUDGETS:
        _FOREIGN_BUDGETS.add(account_id)
        log.warning(
            "budget in another currency than billing's: its hard cap is not enforced",
            extra={
                "account_id": account_id,
                "budget_currency": budget_currency,
                "currency": currency,
            },
        )


def shown(amount: Decimal) -> str:
    """An amount as people read it: two decimal places, more only where it has them."""
    cents = amount.quantize(Decimal("0.01"))
    return f"{cents:f}" if cents == amount else f"{amount.normalize():f}"


def pico_amount(pico: int) -> Decimal:
    """Pico-units as an amount of the currency (exact)."""
    return Decimal(pico).scaleb(-12)


@dataclass(frozen=True, slots=True)
class _Book:
    id: int
    effective_from: datetime
    rates: dict[tuple[str, str], Rate]


class PriceList:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        # currency -> the book in force and any later ones, oldest first.
        self._books: dict[str, list[_Book]] = {}
        self._unpriced: set[tuple[int, str, str]] = set()

    def rate(self, *, currency: str, tier: str, model: str, now: datetime) -> Rate | None:
        """The price of (tier, model), else (tier, "*"), in the book in force at `now`."""
        for book in reversed(self._books.get(currency, ())):
            if book.effective_from <= now:
                found = book.rates.get((tier, model)) or book.rates.get((tier, "*"))
                if found is None:
                    self._note_unpriced(book, tier, model)
                return found
        return None

    def _note_unpriced(self, book: _Book, tier: str, model: str) -> None:
        # Served without counting against budgets; billing reports unpriced usage on its side.
        if (book.id, tier, model) not in self._unpriced:
            self._unpriced.add((book.id, tier, model))
            log.warning(
                "no price in force: requests count nothing against budgets",
                extra={"price_book": book.id, "tier": tier, "model": model},
            )

    async def refresh(self) -> None:
        async with self.pool.connection(timeout=2.0) as conn:
            cursor = await conn.execute(_PRICES_SQL)
            rows = await cursor.fetchall()
        books: dict[str, list[_Book]] = {}
        for book_id, currency, effective_from, tier, model, *prices in rows:
            known = books.setdefault(currency, [])
            if not known or known[-1].id != book_id:
                known.append(_Book(book_id, effective_from, {}))
            if tier is not None:
                known[-1].rates[(tier, model)] = _rate(book_id, *prices)
        self._books = books


def _rate(
    book_id: int,
    input_price: Decimal,
    cached: Decimal,
    output: Decimal,
    reasoning: Decimal | None,
    fee: Decimal,
) -> Rate:
    def per_token(per_million: Decimal) -> int:
        return int(per_million * _PICO_PER_MICRO)

    return Rate(
        book_id=book_id,
        input=per_token(input_price),
        cached=per_token(cached),
        output=per_token(output),
        reasoning=per_token(output if reasoning is None else reasoning),
        fee=int(fee * PICO),
    )


async def month_spend(
    conn: AsyncConnection[Any], *, month: datetime, currency: str
) -> list[tuple[int, int]]:
    """(account_id, pico-units spent) for every account with priced usage this month in
    `currency` (billing's), rated from the ledger exactly like the gateway rates at settle."""
    totals: dict[int, int] = {}
    for account, _, pico in await month_spend_by_project(conn, month=month, currency=currency):
        totals[account] = totals.get(account, 0) + pico
    return list(totals.items())


async def month_spend_by_project(
    conn: AsyncConnection[Any], *, month: datetime, currency: str
) -> list[tuple[int, int | None, int]]:
    """(account_id, project_id, pico-units spent) for every project with priced usage this
    month in `currency`, as month_spend (project_id None for usage of keys deleted before
    projects existed)."""
    params = {"month": month, "currency": currency, "fee_exempt": sorted(FEE_EXEMPT_OUTCOMES)}
    async with conn.transaction():
        # A month of the ledger, summed into a few rows per project: aggregated in memory,
        # where it fits, and without compiling (measured: 2.8 s instead of 5.3 s for 2M rows).
        await conn.execute("SET LOCAL jit = off")
        await conn.execute("SET LOCAL work_mem = '64MB'")
        cursor = await conn.execute(_MONTH_SPEND, params)
        rows = await cursor.fetchall()
    # Exact: the SQL's sum has 6 decimal places, all zero (prices x 10^6 per token).
    return [(int(account), project, int(pico)) for account, project, pico in rows]
