from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.commands import AuditedCommand
from customers.keys import key_id_parse
from customers.models import ApiKey
from customers.services import api_key_revoke


class Command(AuditedCommand):
    help = (
        "Revoke an API key, given its id (tf_<id>) or the whole key. Audited as this command, "
        "run by your OS user."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key")

    def handle(self, *args: Any, **options: Any) -> None:
        given: str = options["key"]
        key_id = key_id_parse(given) or given.removeprefix("tf_")
        try:
            api_key = api_key_revoke(key_id=key_id, actor=self.actor)
        except ApiKey.DoesNotExist as exc:
            raise CommandError(f"no key with id {key_id!r}") from exc
        self.stdout.write(f"revoked tf_{api_key.key_id} at {api_key.revoked_at:%Y-%m-%dT%H:%M:%SZ}")
