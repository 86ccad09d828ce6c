from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser

from audit.commands import AuditedCommand
from audit.services import rows_audited
from fleet.models import Backend
from fleet.services import backend_register


class Command(AuditedCommand):
    help = (
        "Register (or update) an OpenAI-compatible backend. Audited as this command, run by "
        "your OS user."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("base_url", help="e.g. http://127.0.0.1:8000 (without /v1)")
        parser.add_argument("--upstream-model", required=True)
        parser.add_argument(
            "--model", action="append", dest="models", help="public model name (repeatable)"
        )
        parser.add_argument("--max-seqs", type=int, default=256)
        parser.add_argument("--telemetry-url", default="")
        parser.add_argument(
            "--priority",
            action="store_true",
            help="the engine takes a request `priority` (vLLM --scheduling-policy priority)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            backend = self._register(options)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"backend {backend.name} -> {backend.base_url} {backend.public_models}")

    def _register(self, options: dict[str, Any]) -> Backend:
        # backend_register records nothing itself: the command audits the row it writes.
        with rows_audited(actor=self.actor, rows=Backend.objects.filter(name=options["name"])):
            return backend_register(
                name=options["name"],
                base_url=options["base_url"],
                upstream_model=options["upstream_model"],
                public_models=options["models"] or [options["upstream_model"]],
                max_concurrent_sequences=options["max_seqs"],
                telemetry_url=options["telemetry_url"],
                supports_priority=options["priority"],
            )
