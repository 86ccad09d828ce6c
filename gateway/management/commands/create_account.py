from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from customers.services import account_create, tiers_ensure_defaults


class Command(BaseCommand):
    help = "Create an account (tenant) on a tier."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--tier", default="free", help="free, interactive or premium")

    def handle(self, *args: Any, **options: Any) -> None:
        tiers_ensure_defaults()
        account = account_create(name=options["name"], tier_slug=options["tier"])
        self.stdout.write(f"account {account.pk} {account.name} tier={account.tier.slug}")
