from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.commands import AuditedCommand
from customers.models import Account, Tier
from customers.services import account_create, tiers_ensure_defaults


class Command(AuditedCommand):
    help = "Create an account (tenant) on a tier. Audited as this command, run by your OS user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--tier", default="free", help="free, interactive or premium")

    def handle(self, *args: Any, **options: Any) -> None:
        name, tier = options["name"], options["tier"]
        tiers_ensure_defaults(actor=self.actor)
        if not Tier.objects.filter(slug=tier).exists():
            known = ", ".join(Tier.objects.order_by("priority").values_list("slug", flat=True))
            raise CommandError(f"No tier {tier!r}; the tiers are {known}.")
        if Account.objects.filter(name=name).exists():
            raise CommandError(f"An account named {name!r} exists already.")
        account = account_create(name=name, tier_slug=tier, actor=self.actor)
        self.stdout.write(f"account {account.pk} {account.name} tier={account.tier.slug}")
