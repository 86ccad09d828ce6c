from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from customers.models import Account
from customers.services import api_key_issue


class Command(BaseCommand):
    help = "Issue an API key for an account. The key is printed once and never stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("account", help="account name")
        parser.add_argument("--name", default="")
        parser.add_argument("--expires-in-days", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        account = Account.objects.get(name=options["account"])
        days = options["expires_in_days"]
        expires_at = timezone.now() + timedelta(days=days) if days else None
        issued = api_key_issue(account=account, name=options["name"], expires_at=expires_at)
        self.stderr.write("Store this key now; it cannot be shown again.")
        self.stdout.write(issued.plaintext)
