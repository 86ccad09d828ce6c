from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import CommandError, CommandParser
from django.utils import timezone

from audit.commands import AuditedCommand
from console.models import Scope
from console.tokens import staff_token_issue


class Command(AuditedCommand):
    help = (
        "Issue a management API token for a staff user. The token is printed once and never "
        "stored; send it as `Authorization: Bearer <token>`. It can do what both its user's "
        "permissions and its scopes (--scope read|keys|billing|fleet) allow. The issue is audited "
        "as this command, run by your OS user."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="")
        parser.add_argument("--expires-in-days", type=int, default=None)
        parser.add_argument(
            "--scope",
            dest="scopes",
            action="append",
            choices=Scope.values,
            help="What the token may do, on top of its user's permissions; repeat for several. "
            "Default: read only.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["username"]).first()
        if user is None or not user.is_staff:
            raise CommandError(f"{options['username']!r} is not a staff user.")
        days = options["expires_in_days"]
        issued = staff_token_issue(
            actor=self.actor,
            user=user,
            name=options["name"],
            expires_at=timezone.now() + timedelta(days=days) if days else None,
            scopes=options["scopes"],
        )
        self.stderr.write("Store this token now; it cannot be shown again.")
        self.stdout.write(issued.plaintext)
