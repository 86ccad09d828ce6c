"""The price catalogue: versioned price books, their prices per tier and model, and plans.

Which book is in force at an instant, and which of its price rows applies to a request, is
one rule: `catalogue_price_in_force` in SQL (catalogue/migrations) that every query joins, and
`billing.rating` in Python, the reference it is tested against.
"""

from typing import Any

from django.db import models


def _price(**options: Any) -> "models.DecimalField[Any, Any]":
    """A price per million tokens, a fee or a rate."""
    return models.DecimalField(max_digits=18, decimal_places=6, **options)


class PriceBook(models.Model):
    """One version of the prices, in force from `effective_from` until the next version's.

    A book is immutable once in force (billing.services refuses edits); a change of prices
    is a new book. Rating picks, for each request, the book in force at its `started_at`.
    """

    name = models.CharField(max_length=100)
    currency = models.CharField(max_length=3, default="USD")
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["currency", "effective_from"], name="pricebook_one_per_instant"
            )
        ]
        ordering = ["-effective_from"]

    def __str__(self) -> str:
        return f"{self.name} ({self.currency}, from {self.effective_from:%Y-%m-%d})"


class Price(models.Model):
    """Per tier and model: prices per million tokens of each class, and a per-request fee.

    `model` "*" applies to every model of the tier without a row of its own. Reasoning tokens
    are billed as output unless `reasoning_per_million` is set.
    """

    price_book = models.ForeignKey(PriceBook, on_delete=models.PROTECT, related_name="prices")
    tier = models.CharField(max_length=32)
    model = models.CharField(max_length=128, default="*")
    input_per_million = _price()
    cached_input_per_million = _price()
    output_per_million = _price()
    reasoning_per_million = _price(null=True, blank=True)
    request_fee = _price(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["price_book", "tier", "model"], name="price_one_per_tier_model"
            )
        ]

    def __str__(self) -> str:
        return f"{self.price_book_id}:{self.tier}/{self.model}"


class PlanPrice(models.Model):
    """Per tier: the monthly plan fee and the tokens it includes at no charge.

    The free tier is an included quota at zero price. Included tokens are consumed in the
    order requests were made, all token classes alike.
    """

    price_book = models.ForeignKey(PriceBook, on_delete=models.PROTECT, related_name="plans")
    tier = models.CharField(max_length=32)
    monthly_fee = _price(default=0)
    included_tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["price_book", "tier"], name="planprice_one_per_tier")
        ]

    def __str__(self) -> str:
        return f"{self.price_book_id}:{self.tier}"
