import json
from dataclasses import asdict
from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.commands import AuditedCommand
from audit.services import rows_audited
from fleet.models import Backend
from gateway.demo import demo_seed

DEFAULT_BACKENDS = ["sim-a=http://127.0.0.1:9101", "sim-b=http://127.0.0.1:9102"]


class Command(AuditedCommand):
    help = (
        "Set up demo tiers, accounts (acme-research on premium, northwind-apps on interactive, "
        "hobbyist on free) and simulated backends, and issue each demo account a new key, "
        "revoking its earlier demo keys. The keys are printed once. `tf up` runs this on every "
        "start, then seed_demo_billing for the demo's prices, costs and budget. Every change is "
        "audited as this command, run by your OS user."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backend",
            action="append",
            dest="backends",
            metavar="NAME=URL",
            help=f"a simulated backend (repeatable; default {' '.join(DEFAULT_BACKENDS)})",
        )
        parser.add_argument("--json", action="store_true", help="print the keys as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        backend_urls = dict(_name_url(spec) for spec in options["backends"] or DEFAULT_BACKENDS)
        # Tiers, accounts and keys are audited by their services, as this command's run
        # (AuditedCommand); backend registration records nothing itself, so it is audited here.
        with rows_audited(actor=self.actor, rows=Backend.objects.filter(name__in=backend_urls)):
            keys = demo_seed(backend_urls=backend_urls)
        if options["json"]:
            self.stdout.write(json.dumps([asdict(key) for key in keys]))
            return
        self.stderr.write("Store these keys now; they cannot be shown again.")
        for key in keys:
            self.stdout.write(f"{key.account} ({key.tier}): {key.plaintext}")


def _name_url(spec: str) -> tuple[str, str]:
    name, _, url = spec.partition("=")
    if not name or not url:
        raise CommandError(f"--backend takes NAME=URL, not {spec!r}")
    return name, url
