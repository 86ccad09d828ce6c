"""The one place money is rounded (docs/billing.md, "Rounding").

Rated amounts stay unrounded `Decimal` through rating and aggregation (12 places, the storage
precision: a price per million has 6 places and a token count none, so rating is exact). An
invoice is rounded once: its total is the sum of its lines' unrounded amounts rounded half to
even in the currency's minor unit, and the lines' minor units are allocated from that total by
largest remainder, so they add up to it exactly and each is within one unit of its own amount.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal, localcontext

from babel.numbers import format_currency

# Wide enough that no sum or product of stored amounts is ever rounded by the context.
CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)
AMOUNT_PLACES = 12
PRICE_PLACES = 6
# How amounts are written for people (money_text): the currency's sign, "," for thousands.
MONEY_LOCALE = "en_US"

# ISO 4217 minor-unit exponents that differ from 2.
_EXPONENTS = {
    "BHD": 3,
    "CLP": 0,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "OMR": 3,
    "TND": 3,
    "VND": 0,
}


@dataclass(frozen=True, slots=True)
class Allocation:
    """An invoice's total and its lines' amounts, in minor units; sum(lines) == total."""

    total_minor: int
    lines_minor: tuple[int, ...]


def minor_exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit: 2 for USD and EUR, 0 for JPY."""
    return _EXPONENTS.get(currency.upper(), 2)


def to_minor(amount: Decimal, currency: str) -> int:
    """`amount` in minor units, rounded half to even."""
    return int(_scaled(amount, currency).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_minor(minor: int, currency: str) -> Decimal:
    return CONTEXT.scaleb(Decimal(minor), -minor_exponent(currency))


def allocate(amounts: Sequence[Decimal], currency: str) -> Allocation:
    """Round an invoice: the total half to even, the lines by largest remainder.

    Every line starts at the floor of its amount; the units the total has beyond those floors
    go one each to the lines with the largest remainders (the earlier line on a tie). Each
    line thus ends at the floor or the ceiling of its own amount.
    """
    total = to_minor(total_of(amounts), currency)
    scaled = [_scaled(amount, currency) for amount in amounts]
    floors = [int(value.to_integral_value(rounding=ROUND_FLOOR)) for value in scaled]
    extra = total - sum(floors)
    by_remainder = sorted(
        range(len(scaled)), key=lambda i: (CONTEXT.subtract(floors[i], scaled[i]), i)
    )
    lines = list(floors)
    for i in by_remainder[:extra]:
        lines[i] += 1
    return Allocation(total_minor=total, lines_minor=tuple(lines))


def per_million(total: Decimal, quantity: int) -> Decimal:
    """The unit price (per million) that `quantity` tokens costing `total` average, 6 places."""
    if quantity == 0:
        return Decimal(0)
    price = CONTEXT.divide(CONTEXT.multiply(total, Decimal(1_000_000)), Decimal(quantity))
    return price.quantize(Decimal(1).scaleb(-PRICE_PLACES), context=CONTEXT)


def share_of(amount: Decimal, part: int, whole: int) -> Decimal:
    """`part`/`whole` of `amount` (a prorated fee), at the 12 places amounts are kept to."""
    share = CONTEXT.divide(CONTEXT.multiply(amount, Decimal(part)), Decimal(whole))
    return share.quantize(Decimal(1).scaleb(-AMOUNT_PLACES), context=CONTEXT)


def total_of(amounts: Iterable[Decimal]) -> Decimal:
    """The exact sum of unrounded amounts."""
    with localcontext(CONTEXT):
        return sum(amounts, Decimal(0))


def money_text(amount: Decimal, currency: str, *, places: int | None = None) -> str:
    """`amount` as a person reads it: the currency's sign, thousands grouped, rounded by the
    one rule to the currency's minor unit ("$1,341.50", "-€13.41", "¥1,341"), or to `places`
    decimals where a small amount needs more ("$0.0026")."""
    exponent = minor_exponent(currency)
    places = exponent if places is None else places
    extra = places - exponent
    shown = from_minor(to_minor(amount.scaleb(extra), currency), currency).scaleb(-extra)
    pattern = "¤#,##0" + ("." + "0" * places if places > 0 else "")
    return format_currency(
        shown, currency.upper(), format=pattern, locale=MONEY_LOCALE, currency_digits=False
    )


def minor_text(minor: int, currency: str) -> str:
    """An amount in minor units as a person reads it (`money_text`)."""
    return money_text(from_minor(minor, currency), currency)


def _scaled(amount: Decimal, currency: str) -> Decimal:
    return CONTEXT.scaleb(amount, minor_exponent(currency))
