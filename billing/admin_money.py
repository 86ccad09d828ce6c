"""Money as the console shows it: rounded by billing.money's one rule, the exact amount a
hover away (a cell's title) and in full on the object's own page (docs/billing.md, "Money in
the console").

A rounded amount alone would hide what a customer was charged to the micro-unit and make a
sub-cent cost read "$0.00"; the exact amount alone is unreadable ("13.406000000000").
"""

from decimal import Decimal

from django.utils.html import format_html
from django.utils.safestring import SafeString

from billing.money import AMOUNT_PLACES, minor_exponent, minor_text, money_text, to_minor

# Significant digits a sub-minor-unit amount keeps in a cell ("$0.0026", not "$0.00").
SMALL_DIGITS = 2


def exact_text(amount: Decimal, currency: str) -> str:
    """Every place the amount has, trailing zeros beyond the minor unit dropped: "$13.406",
    "$13.40", "-$0.000000000001"."""
    places = min(max(minor_exponent(currency), _places(amount)), AMOUNT_PLACES)
    return money_text(amount, currency, places=places)


def money_cell(amount: Decimal | None, currency: str) -> SafeString | str:
    """`amount` rounded to the minor unit (or to two significant digits where that would
    read as zero), the exact amount in its title."""
    if amount is None:
        return "-"
    return format_html(
        '<span title="Exact: {}">{}</span>', exact_text(amount, currency), _shown(amount, currency)
    )


def minor_cell(minor: int, amount: Decimal, currency: str) -> SafeString:
    """An invoice's rounded `minor` units, the unrounded `amount` they round in the title."""
    return format_html(
        '<span title="Exact: {}">{}</span>',
        exact_text(amount, currency),
        minor_text(minor, currency),
    )


def percent_text(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:,.1f} %"


def _shown(amount: Decimal, currency: str) -> str:
    if amount == 0 or to_minor(amount, currency) != 0:
        return money_text(amount, currency)
    places = min(SMALL_DIGITS - 1 - amount.adjusted(), AMOUNT_PLACES)
    return money_text(amount, currency, places=places)


def _places(amount: Decimal) -> int:
    exponent = amount.normalize().as_tuple().exponent
    assert isinstance(exponent, int), "amounts are finite"
    return max(-exponent, 0)
