"""The console's forms for a price book and its rows: tiers and models chosen from lists, and a
confirmation before a new book takes effect at once.

A price row names a tier (customers) and a model the fleet serves (fleet), apps this one may
not import (the bottom apps are independent, docs/architecture.md). So the lists come from
`OFFER`, which the console sets when it starts (`console.price_book_choices`); until then a
form offers what the books already price.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.utils import timezone

from catalogue.models import PlanPrice, Price, PriceBook

ANY_MODEL = "*"


def _tiers_priced() -> list[str]:
    return sorted(set(PlanPrice.objects.values_list("tier", flat=True)).union(_priced("tier")))


def _models_priced() -> list[str]:
    return sorted(_priced("model") - {ANY_MODEL})


def _priced(field: str) -> set[str]:
    return set(Price.objects.values_list(field, flat=True))


@dataclass
class Offer:
    """Where the choices come from: the tiers' slugs in priority order, the models served."""

    tiers: Callable[[], list[str]] = _tiers_priced
    models: Callable[[], list[str]] = _models_priced


OFFER = Offer()


def _choices(values: list[str], current: str, gone: str) -> list[tuple[str, str]]:
    """`values` as choices, with the row's `current` value kept (marked `gone`) so that an old
    row still shows what it holds."""
    choices = [(value, value) for value in values]
    if current and current not in values:
        choices.append((current, f"{current} ({gone})"))
    return choices


class _TierChoiceForm(forms.ModelForm[Any]):
    tier = forms.ChoiceField()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tiers = OFFER.tiers()
        field: Any = self.fields["tier"]
        field.choices = [
            ("", "---------"),
            *_choices(tiers, self.instance.tier, "no longer a tier"),
        ]
        field.error_messages["invalid_choice"] = (
            f"“%(value)s” is not a tier; the tiers are {', '.join(tiers) or 'none yet'}."
        )


class PriceForm(_TierChoiceForm):
    """A price row: its tier, and a model the fleet serves or "*" for every model of the tier
    without a row of its own."""

    model = forms.ChoiceField(initial=ANY_MODEL)

    class Meta:
        model = Price
        fields = [
            "tier",
            "model",
            "input_per_million",
            "cached_input_per_million",
            "output_per_million",
            "reasoning_per_million",
            "request_fee",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field: Any = self.fields["model"]
        current = self.instance.model if self.instance.pk is not None else ANY_MODEL
        served = [ANY_MODEL, *OFFER.models()]
        field.choices = [
            (ANY_MODEL, "* (any model)"),
            *_choices(served, current, "no longer served")[1:],
        ]
        field.error_messages["invalid_choice"] = (
            "“%(value)s” is not a model the fleet serves; choose one, or * for any model."
        )


class PlanPriceForm(_TierChoiceForm):
    class Meta:
        model = PlanPrice
        fields = ["tier", "monthly_fee", "included_tokens"]


class PriceBookForm(forms.ModelForm[PriceBook]):
    """A book's name, currency and start. A new book starting at or before now is in force
    the moment it is saved, and sealed: the form asks first (`save_anyway`)."""

    save_anyway = forms.BooleanField(
        required=False,
        widget=forms.HiddenInput,
        label="Save anyway",
        help_text="The book takes effect at once and can never be changed afterwards.",
    )

    class Meta:
        model = PriceBook
        fields = ["name", "currency", "effective_from"]

    def clean_effective_from(self) -> datetime:
        """A book not yet in force only moves later (the database refuses the rest too): moved
        into the past it would be in force at once, over usage already rated by another book."""
        start: datetime = self.cleaned_data["effective_from"]
        if self.instance.pk is not None and start <= timezone.now():
            raise forms.ValidationError(
                "A book not yet in force can only move to a later start; "
                "to change prices from an earlier time, create a new book."
            )
        return start

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start = cleaned.get("effective_from")
        new = self.instance.pk is None
        if new and start is not None and start <= timezone.now() and not cleaned["save_anyway"]:
            # Shown beside the error, unticked: saving needs a deliberate second step.
            self.fields["save_anyway"].widget = forms.CheckboxInput()
            self.add_error(
                "save_anyway",
                forms.ValidationError(_past_start_warning(start, cleaned.get("currency"))),
            )
        return cleaned


def _past_start_warning(start: datetime, currency: str | None) -> list[str]:
    """What saving a book that starts at `start`, now or earlier, does: one line each."""
    books = PriceBook.objects.filter(currency=currency or "")
    replaced = books.filter(effective_from__lte=start).first()
    later = books.filter(effective_from__gt=start).order_by("effective_from").first()
    until = f" until {_utc(later.effective_from)}" if later else ""
    return [
        "This book takes effect at once and can never be changed afterwards: it will rate "
        f"usage from {_utc(start)}{until}, requests already made included.",
        f"It takes the place of “{replaced.name}” from then."
        if replaced
        else f"No {currency} book was in force before it: that usage was unpriced until now.",
        "Its prices, plans, start and name are sealed when it is saved; a correction is a new "
        "book.",
        "Save anyway? Tick “Save anyway” and save again.",
    ]


def _utc(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
