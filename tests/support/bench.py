"""A benchmark command run as its tests run it: at a tiny scale, in a child process, on a
database of its own (created and dropped by the bench) on the test run's PostgreSQL server."""

import os
import subprocess
import sys

from django.conf import settings

from tests.support.servers import ROOT

# bench.meter's backlog at the scale tests run it (bench.cluster takes the same options): the
# 2,000 events and their replay stored in a second or two.
TINY_BACKLOG = ("--events", "2000", "--accounts", "20", "--batch-size", "500")


def bench_run(module: str, *args: str, database: str) -> str:
    """`python -m <module> <args> --database <database>_<pid>`'s output; a failure raises."""
    db = settings.DATABASES["default"]
    server = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}"
    env = {
        **os.environ,
        "TF_PROFILE": "local",
        "DATABASE_URL": f"{server}/postgres",
        "LOG_LEVEL": "WARNING",
    }
    result = subprocess.run(
        [sys.executable, "-m", module, *args, "--database", f"{database}_{os.getpid()}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stdout
