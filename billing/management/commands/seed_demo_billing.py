from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing.demo import demo_billing_seed

# The premium demo account (gateway.demo.DEMO_ACCOUNTS): its budget shows spend against a
# cap.
BUDGET_ACCOUNT = "acme-research"


class Command(BaseCommand):
    help = (
        "Where none exist yet: a price book for the demo model on every tier, a cost model per "
        "simulated backend and acme-research's budget (billing/demo.py says where the figures "
        "come from). `tf up` runs it after seed_demo on every start; staff edits are kept."
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
        demo_billing_seed(
            model=options["model"], backends=options["backends"], budget_account=BUDGET_ACCOUNT
        )
