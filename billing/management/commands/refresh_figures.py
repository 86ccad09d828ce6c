import signal
import sys
import threading
import time
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from billing.margins import figures_refresh
from metering.attribution import energy_attribute_ready
from metering.models import EnergyCalibration, EnergyInterval
from metering.telemetry import telemetry_scrape


class Command(BaseCommand):
    help = (
        "Bring the month's figures up to now at once, as the beat would over minutes and "
        "hours: scrape every backend's telemetry (every --scrape-every seconds for "
        "--scrape-for seconds or until interrupted, e.g. while traffic runs), attribute the "
        "energy of every interval whose requests are stored, then roll up the ledger up to now "
        "(the hour in progress included) and rebuild the month's margins. `tf demo` runs it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--scrape-for",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="scrape repeatedly this long first; SIGINT (Ctrl-C) ends it early "
            "(default 0: no scraping before the final one)",
        )
        parser.add_argument(
            "--until-stdin-closes",
            action="store_true",
            help="also end the scraping when standard input closes (how `tf demo` says its "
            "traffic is over: unlike a signal, it cannot arrive before this command listens)",
        )
        parser.add_argument(
            "--scrape-every",
            type=float,
            default=1.0,
            metavar="SECONDS",
            help="the scrapes' period meanwhile (default 1): short intervals show who "
            "used the GPUs when (docs/energy.md, 'Error sources')",
        )
        parser.add_argument(
            "--settle",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="how long to wait at most for the last requests' energy (default 30)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        if options["until_stdin_closes"]:
            threading.Thread(target=_set_at_eof, args=(stop,), daemon=True).start()
        _scrape_while_traffic(options["scrape_for"], options["scrape_every"], stop)
        ended = timezone.now()
        waiting = _attribute_until(ended, deadline=time.monotonic() + options["settle"])
        if waiting:
            self.stderr.write("energy still waiting for attribution on " + ", ".join(waiting))
        uncalibrated = _uncalibrated()
        if uncalibrated:
            self.stderr.write(
                "no energy model yet for "
                + ", ".join(uncalibrated)
                + ": their energy waits until one is fitted (20 telemetry intervals of the "
                "last hour, with prefill and decode in them; docs/energy.md)"
            )
        window = figures_refresh()
        self.stdout.write(f"figures of {window.since:%Y-%m} up to {window.until:%H:%M:%S} UTC")


def _set_at_eof(stop: threading.Event) -> None:
    sys.stdin.buffer.read()
    stop.set()


def _scrape_while_traffic(seconds: float, every: float, stop: threading.Event) -> None:
    """Scrape every `every` seconds for `seconds`, or until SIGINT or `stop`."""
    if seconds <= 0:
        return
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            _scrape(min_gap=every / 2)
            stop.wait(min(every, max(deadline - time.monotonic(), 0.0)))
    finally:
        signal.signal(signal.SIGINT, previous)


def _scrape(*, min_gap: float) -> None:
    telemetry_scrape(timeout=settings.METERING.telemetry_timeout_seconds, min_gap=min_gap)


def _attribute_until(ended: datetime, *, deadline: float) -> list[str]:
    """Scrape once more, so that an interval ends after the last request, and attribute
    until every interval that ended by `ended` is done (on the backends with an energy
    model); returns the backends still waiting at the deadline.

    An interval is attributed once all its requests are stored (docs/energy.md,
    "Readiness"): the meter may still hold the last ones for a moment.
    """
    _scrape(min_gap=0.0)
    while True:
        energy_attribute_ready()
        waiting = _waiting(ended)
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(1.0)


def _waiting(ended: datetime) -> list[str]:
    modelled = EnergyCalibration.objects.values("backend")
    pending = EnergyInterval.objects.filter(
        attributed_at=None, ended_at__lte=ended, backend__in=modelled
    )
    return sorted(set(pending.values_list("backend", flat=True)))


def _uncalibrated() -> list[str]:
    modelled = EnergyCalibration.objects.values("backend")
    pending = EnergyInterval.objects.filter(attributed_at=None).exclude(backend__in=modelled)
    return sorted(set(pending.values_list("backend", flat=True)))
