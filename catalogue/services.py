"""Audited changes to price books and their prices: a book is immutable once in force.

Rating prices each request by the book in force when it started, so changing a book in force
would change what past usage costs; a change of prices is a new book (billing/models.py).
A book may be created with any start, its prices and plans in the same request.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.services import (
    AnyRequest,
    audit_change,
    object_create,
    object_delete,
    object_update,
    snapshot,
)
from catalogue.models import PlanPrice, Price, PriceBook


def price_book_snapshot(book: PriceBook) -> dict[str, Any]:
    data = snapshot(book)
    assert data is not None
    return {
        **data,
        "prices": [snapshot(price) for price in book.prices.order_by("pk")],
        "plans": [snapshot(plan) for plan in book.plans.order_by("pk")],
    }


def price_book_create(
    *,
    actor: object,
    data: Mapping[str, Any],
    prices: Sequence[Mapping[str, Any]] = (),
    plans: Sequence[Mapping[str, Any]] = (),
    request: AnyRequest | None = None,
) -> PriceBook:
    with transaction.atomic():
        book = PriceBook.objects.create(**data)
        Price.objects.bulk_create(Price(price_book=book, **price) for price in prices)
        PlanPrice.objects.bulk_create(PlanPrice(price_book=book, **plan) for plan in plans)
        audit_change(actor, "create", book, None, price_book_snapshot(book), request)
    return book


def price_book_update(
    *, actor: object, book: PriceBook, data: Mapping[str, Any], request: AnyRequest | None = None
) -> PriceBook:
    with transaction.atomic():
        book = _locked_draft(book.pk)
        effective_from = data.get("effective_from")
        if effective_from is not None and effective_from <= timezone.now():
            raise ValidationError(
                {"effective_from": "A book not yet in force can only be moved to a later time."}
            )
        before = price_book_snapshot(book)
        for name, value in data.items():
            setattr(book, name, value)
        book.save()
        audit_change(actor, "update", book, before, price_book_snapshot(book), request)
    return book


def price_book_delete(*, actor: object, book: PriceBook, request: AnyRequest | None = None) -> None:
    with transaction.atomic():
        book = _locked_draft(book.pk)
        before = price_book_snapshot(book)
        book.prices.all().delete()
        book.plans.all().delete()
        object_delete(actor=actor, instance=book, request=request, before=before)


def book_item_create(
    *,
    actor: object,
    model: type[Price] | type[PlanPrice],
    data: Mapping[str, Any],
    request: AnyRequest | None = None,
) -> Price | PlanPrice:
    """Add a price or plan price to a book that is not in force yet."""
    with transaction.atomic():
        _locked_draft(data["price_book"].pk)
        return object_create(actor=actor, model=model, data=data, request=request)


def book_item_update(
    *,
    actor: object,
    item: Price | PlanPrice,
    data: Mapping[str, Any],
    request: AnyRequest | None = None,
) -> Price | PlanPrice:
    """Change a price or plan price; the book it is in and any book it moves to must be drafts."""
    with transaction.atomic():
        _locked_draft(item.price_book_id)
        if "price_book" in data:
            _locked_draft(data["price_book"].pk)
        return object_update(actor=actor, instance=item, data=data, request=request)


def book_item_delete(
    *, actor: object, item: Price | PlanPrice, request: AnyRequest | None = None
) -> None:
    with transaction.atomic():
        _locked_draft(item.price_book_id)
        object_delete(actor=actor, instance=item, request=request)


def _locked_draft(book_id: int) -> PriceBook:
    """The book, locked against concurrent edits; refused once it is in force."""
    book = PriceBook.objects.select_for_update().get(pk=book_id)
    if book.effective_from <= timezone.now():
        raise ValidationError(
            f"Price book {book.pk} is in force since {book.effective_from:%Y-%m-%d %H:%M} UTC "
            "and cannot change; create a new book with the new prices.",
            code="price_book_in_force",
        )
    return book
