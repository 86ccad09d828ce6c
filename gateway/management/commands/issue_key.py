from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone

from audit.commands import AuditedCommand
from customers.models import Account
from customers.services import api_key_issue


class Command(AuditedCommand):
    help = (
        "Issue an API key for an account. The key is printed once and never stored. Audited as "
        "this command, run by your OS user."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("account", help="account name")
        parser.add_argument("--name", default="")
        parser.add_argument("--expires-in-days", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        account = Account.objects.filter(name=options["account"]).first()
        if account is None:
            raise CommandError(f"No account named {options['account']!r}.")
        days = options["expires_in_days"]
        expires_at = timezone.now() + timedelta(days=days) if days else None
        issued = api_key_issue(
            account=account, name=options["name"], expires_at=expires_at, actor=self.actor
        )
        self.stderr.write("Store this key now; it cannot be shown again.")
        self.stdout.write(issued.plaintext)
