import os
import sys
from datetime import UTC, datetime, time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime

from billing.exports import FORMATS, KINDS, ExportFailed, export_write


def instant(text: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 date-time (UTC unless it says otherwise)."""
    moment = parse_datetime(text)
    if moment is None:
        day = parse_date(text)
        if day is None:
            raise CommandError(f"not a date or ISO 8601 date-time: {text!r}")
        moment = datetime.combine(day, time())
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Export usage records (by start time) or invoice lines (by period start) of "
        "[--from, --to) as CSV or Parquet, streamed to a file or stdout."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kind", choices=KINDS)
        parser.add_argument("--from", dest="since", required=True, type=instant, help="inclusive")
        parser.add_argument("--to", dest="until", required=True, type=instant, help="exclusive")
        parser.add_argument("--account", type=int, help="one account's id (default: all)")
        parser.add_argument("--project", type=int, help="one project's id (default: all)")
        parser.add_argument("--format", dest="fmt", choices=FORMATS, default="csv")
        parser.add_argument("--output", required=True, help="a file, or - for stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["since"] >= options["until"]:
            raise CommandError("--from must be before --to")
        export = {
            "kind": options["kind"],
            "fmt": options["fmt"],
            "since": options["since"],
            "until": options["until"],
            "account_id": options["account"],
            "project_id": options["project"],
        }
        if options["output"] == "-":
            try:
                export_write(**export, out=sys.stdout.buffer)
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                # The reader stopped early (`| head`): not an error; nothing more to say.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except ExportFailed as failed:
                raise CommandError(str(failed)) from failed
            return
        with open(options["output"], "wb") as out:
            try:
                written = export_write(**export, out=out)
            except Exception as error:
                # Half a file would pass for the whole export: none is left (the error is logged).
                os.remove(options["output"])
                raise CommandError(f"{error} ({options['output']} not written)") from error
        self.stderr.write(f"{options['output']}: {written} bytes")
