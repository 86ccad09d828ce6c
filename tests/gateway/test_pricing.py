"""The gateway's prices: the book in force, and integer amounts equal to billing's rating."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from hypothesis import given
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from billing import rating
from catalogue.models import Price, PriceBook
from gateway.pricing import PriceList, Rate, _rate, pico_amount

# A currency of this module's own: books are shared by the whole test session.
CURRENCY = "XBB"
prices = st.decimals(min_value=0, max_value=10**6, places=6)
counts = st.integers(0, 10**7)


@given(
    input_price=prices,
    cached_price=prices,
    output_price=prices,
    reasoning_price=st.none() | prices,
    fee=prices,
    tokens=st.tuples(counts, counts, counts, counts),
    outcome=st.sampled_from(["ok", "backend_error", "client_disconnect"]),
)
def test_a_requests_cost_is_billings_amount_exactly(
    input_price: Decimal,
    cached_price: Decimal,
    output_price: Decimal,
    reasoning_price: Decimal | None,
    fee: Decimal,
    tokens: tuple[int, int, int, int],
    outcome: str,
) -> None:
    cached, prompt_extra, reasoning, completion_extra = tokens
    prompt, completion = cached + prompt_extra, reasoning + completion_extra
    gateway_rate = _rate(1, input_price, cached_price, output_price, reasoning_price, fee)
    record = {
        "prompt_tokens": prompt,
        "cached_prompt_tokens": cached,
        "completion_tokens": completion,
        "reasoning_tokens": reasoning,
        "outcome": outcome,
    }
    pico = gateway_rate.cost_of(record)

    # What billing's rating (the invoices' reference) makes of the same request.
    amount = rating.rate(
        rating.Quantities.of(
            prompt=prompt,
            cached=cached,
            completion=completion,
            reasoning=reasoning,
            requests=rating.fee_requests(outcome),
        ),
        rating.Terms(input_price, cached_price, output_price, reasoning_price, fee),
    ).total
    # The spend counter holds it exactly, in pico-units: no rounding anywhere.
    assert pico_amount(pico) == amount
    most = gateway_rate.most(prompt=prompt, completion=completion)
    assert most >= pico


def test_the_book_in_force_and_the_most_specific_row_price_a_request(live_db: None) -> None:
    now = datetime.now(UTC)
    with transaction.atomic():  # each book composed whole: one in force is then sealed
        old, current, future = (
            PriceBook.objects.create(name=name, currency=CURRENCY, effective_from=now + offset)
            for name, offset in (
                ("old", -timedelta(days=30)),
                ("current", -timedelta(days=1)),
                ("future", timedelta(days=1)),
            )
        )
        for book, price in ((old, "1"), (current, "2"), (future, "3")):
            Price.objects.create(
                price_book=book,
                tier="premium",
                model="*",
                input_per_million=Decimal(price),
                cached_input_per_million=Decimal(0),
                output_per_million=Decimal(price),
            )
        Price.objects.create(
            price_book=current,
            tier="premium",
            model="big",
            input_per_million=Decimal("7.000001"),
            cached_input_per_million=Decimal(0),
            output_per_million=Decimal(8),
            reasoning_per_million=Decimal(9),
            request_fee=Decimal("0.5"),
        )
    price_list = asyncio.run(_loaded())

    def rated(tier: str, model: str, at: datetime, currency: str = CURRENCY) -> Rate | None:
        return price_list.rate(currency=currency, tier=tier, model=model, now=at)

    assert rated("premium", "small", now) == Rate(current.pk, 2 * 10**6, 0, 2 * 10**6, 2 * 10**6, 0)
    assert rated("premium", "big", now) == Rate(
        current.pk, 7_000_001, 0, 8 * 10**6, 9 * 10**6, 5 * 10**11
    )
    # A book takes over at its instant without a refresh; the one it replaced is forgotten.
    assert rated("premium", "small", now + timedelta(days=2)) == Rate(
        future.pk, 3 * 10**6, 0, 3 * 10**6, 3 * 10**6, 0
    )
    assert rated("premium", "small", now - timedelta(days=20)) is None
    # No row for the tier, or no book in the currency: unpriced.
    assert rated("free", "small", now) is None
    assert rated("premium", "small", now, currency="XBC") is None


async def _loaded() -> PriceList:
    db = settings.DATABASES["default"]
    pool = AsyncConnectionPool(
        f"dbname={db['NAME']} user={db['USER']} host={db['HOST']} port={db['PORT']}", open=False
    )
    await pool.open()
    try:
        price_list = PriceList(pool)
        await price_list.refresh()
        return price_list
    finally:
        await pool.close()
