import signal
import threading
import time
from concurrent.futures import Future
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from metering.consumer import Meter

# After a stop signal, how long the meter may take to finish its batch. One still waiting for
# PostgreSQL then (the connection pool waits DB_POOL_TIMEOUT_SECONDS) hands the batch back,
# unacknowledged, and the process exits without it.
STOP_GRACE_SECONDS = 0.4


class Command(BaseCommand):
    help = "Run the meter: store usage events from Redis into PostgreSQL until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--drain", action="store_true", help="store what is queued, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        meters = Meter.from_settings()  # one per shard of the usage stream
        if options["drain"]:
            self.stdout.write(f"stored {sum(meter.drain() for meter in meters)} usage events")
            return
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        running = [_start(meter, stop) for meter in meters]
        # This thread only polls: the signal handler runs on it, and setting `stop` while
        # this thread held the event's lock (inside stop.wait) would deadlock. One meter that
        # fails stops them all: the process exits and its supervisor starts it again.
        while not stop.is_set() and not any(future.done() for future in running):
            time.sleep(0.05)
        stop.set()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for meter, future in zip(meters, running, strict=True):
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                meter.leave()


def _start(meter: Meter, stop: threading.Event) -> Future[None]:
    """The meter's loop on a daemon thread, so that a stopped meter can exit while that
    thread still waits for PostgreSQL. The future carries its outcome, errors included."""
    running: Future[None] = Future()

    def work() -> None:
        try:
            meter.run(stop)
        except BaseException as exc:
            running.set_exception(exc)
        else:
            running.set_result(None)

    threading.Thread(target=work, name=f"meter {meter.stream}", daemon=True).start()
    return running
