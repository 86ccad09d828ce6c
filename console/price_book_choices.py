"""The lists a price book's forms choose from (catalogue.forms.OFFER): the tiers, and the models
the fleet serves. The console sits above customers, the fleet and the catalogue, so it is the
one to hand the catalogue's forms what the other two hold; it does so when it starts
(console.apps.ConsoleConfig.ready)."""

from catalogue.forms import OFFER
from customers.models import Tier
from fleet.models import Backend


def tier_slugs() -> list[str]:
    """Every tier, in priority order."""
    return list(Tier.objects.values_list("slug", flat=True))


def models_served() -> list[str]:
    """Every public model name of a backend, enabled or not: a backend out for maintenance
    still has its models priced."""
    return sorted(
        {
            model
            for models in Backend.objects.values_list("public_models", flat=True)
            for model in models
        }
    )


def price_book_choices_offer() -> None:
    OFFER.tiers = tier_slugs
    OFFER.models = models_served
