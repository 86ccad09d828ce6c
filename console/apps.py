from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "console"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The price book forms choose tiers and models from customers and the fleet, which the
        # catalogue may not import.
        from console.price_book_choices import price_book_choices_offer

        price_book_choices_offer()
