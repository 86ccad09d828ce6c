"""The credits page's forms: buying credits and the automatic top-up. They check what a member
types against billing's own rules (billing.checkout), so the form and the service agree."""

from decimal import Decimal
from typing import Any

from django import forms

from billing.checkout import (
    PURCHASE_MAX,
    CheckoutError,
    TopupSettings,
    purchase_amount_check,
    topup_problems,
)

# Large enough for any threshold or cap a purchase could reach; the column holds far more.
_MOST = Decimal("1000000")


def _money(label: str, most: Decimal = _MOST, **options: Any) -> forms.DecimalField:
    return forms.DecimalField(
        label=label, min_value=Decimal(0), max_value=most, decimal_places=2, **options
    )


class BuyCreditsForm(forms.Form):
    """An amount in billing's currency; `attempt` names this form's one purchase, so a second
    click of Buy opens the same Checkout page."""

    amount = _money("Amount", max_digits=9)
    attempt = forms.UUIDField(widget=forms.HiddenInput)

    def clean_amount(self) -> Decimal:
        amount: Decimal = self.cleaned_data["amount"]
        try:
            return purchase_amount_check(amount)
        except CheckoutError as error:
            raise forms.ValidationError(str(error)) from None


class TopupForm(forms.Form):
    """When the balance falls under `threshold`, charge the saved card `amount`, at most
    `monthly_cap` a calendar month (UTC)."""

    enabled = forms.BooleanField(label="Top up automatically", required=False)
    threshold = _money("When the balance falls under", required=False)
    amount = _money("Add", PURCHASE_MAX, required=False)
    monthly_cap = _money("At most a month", required=False)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        wanted = TopupSettings(
            enabled=bool(cleaned.get("enabled")),
            threshold=cleaned.get("threshold") or Decimal(0),
            amount=cleaned.get("amount") or Decimal(0),
            monthly_cap=cleaned.get("monthly_cap") or Decimal(0),
        )
        for field, message in topup_problems(wanted):
            self.add_error(field, message)
        cleaned["wanted"] = wanted
        return cleaned

    @staticmethod
    def initial_of(current: TopupSettings) -> dict[str, Any]:
        return {
            "enabled": current.enabled,
            "threshold": current.threshold.normalize() if current.threshold else None,
            "amount": current.amount.normalize() if current.amount else None,
            "monthly_cap": current.monthly_cap.normalize() if current.monthly_cap else None,
        }
