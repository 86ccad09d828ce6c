"""Amounts as customers read them, by billing's one rounding rule (billing/money.py)."""

from decimal import Decimal
from typing import Any

from django import template

from billing.money import minor_text, money_text

register = template.Library()


@register.filter
def money(amount: Decimal | None, currency: str) -> str:
    """ "$1,341.50": an unrounded amount, rounded for reading only."""
    return "—" if amount is None else money_text(amount, currency)


@register.filter
def total(bill: Any) -> str:
    """An invoice's (or an estimate's) total, from its minor units."""
    return minor_text(bill.total_minor, bill.currency)
