import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from metering.consumer import Meter


class Command(BaseCommand):
    help = "Run the meter: store usage events from Redis into PostgreSQL until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--drain", action="store_true", help="store what is queued, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        meter = Meter.from_settings()
        if options["drain"]:
            self.stdout.write(f"stored {meter.drain()} usage events")
            return
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        meter.run(stop)
