import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.report_forms import report_render
from billing.reports import REPORT_FORMATS, ReportError, period_parse
from billing.selectors import billing_currency


class Command(BaseCommand):
    help = (
        "Write the finance report of a month (revenue, cost, margin by tier, model, backend "
        "and account) from the stored margins, as HTML with charts, CSV or PDF."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", required=True, help="the month, YYYY-MM")
        parser.add_argument("--format", dest="fmt", choices=REPORT_FORMATS, default="html")
        parser.add_argument("--currency", help="billing's currency unless given")
        parser.add_argument("--output", required=True, help="a file, or - for standard output")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            period_start = period_parse(options["period"])
        except ValueError as error:
            raise CommandError(str(error)) from None
        try:
            body = report_render(
                period_start=period_start,
                currency=(options["currency"] or billing_currency()).upper(),
                fmt=options["fmt"],
            )
        except ReportError as error:
            raise CommandError(str(error)) from None
        if options["output"] == "-":
            self.stdout.flush()
            sys.stdout.buffer.write(body)
            return
        Path(options["output"]).write_bytes(body)
        self.stdout.write(f"{options['output']}: {len(body)} bytes")
