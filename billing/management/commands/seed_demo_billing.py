from typing import Any

from django.core.management.base import CommandParser
from django.db import transaction

from audit.commands import AuditedCommand
from audit.services import audit_change, snapshot
from billing.demo import DemoBilling, demo_billing_seed
from catalogue.services import price_book_snapshot

# The premium demo account (gateway.demo.DEMO_ACCOUNTS): its budget shows spend against a
# cap.
BUDGET_ACCOUNT = "acme-research"


class Command(AuditedCommand):
    help = (
        "Where none exist yet: a price book for the demo model on every tier, a cost model per "
        "simulated backend and acme-research's budget (billing/demo.py says where the figures "
        "come from). `tf up` runs it after seed_demo on every start; staff edits are kept. What "
        "it creates is audited as this command, run by your OS user."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True, help="the public model to price")
        parser.add_argument(
            "--backend",
            action="append",
            dest="backends",
            default=[],
            metavar="NAME",
            help="a backend to cost (repeatable)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            seeded = demo_billing_seed(
                model=options["model"], backends=options["backends"], budget_account=BUDGET_ACCOUNT
            )
            self._audit(seeded)

    def _audit(self, seeded: DemoBilling) -> None:
        """The seeding writes rows directly; each one it created is recorded here."""
        if seeded.price_book is not None:
            book = seeded.price_book
            audit_change(self.actor, "create", book, None, price_book_snapshot(book))
        for created in [*seeded.cost_models, seeded.budget]:
            if created is not None:
                audit_change(self.actor, "create", created, None, snapshot(created))
