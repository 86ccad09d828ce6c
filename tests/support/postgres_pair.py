"""A PostgreSQL primary and its streaming replica of a test run's own, on spare loopback ports
in a temporary directory, made as docs/deployment.md says an operator makes one: `initdb` the
primary, start it, `pg_basebackup -R` it into the replica's directory, start the replica.

Tests pause the replica's replay (lag at will) and stop it (down); `stop` removes every trace.
As root, the servers run as the `postgres` user, who owns the directory (PostgreSQL refuses
to run as root).
"""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from tests.support.servers import free_port
from tests.support.waiting import wait_until

# The server's own tools: initdb on PATH is a link into their directory.
BIN = Path(shutil.which("initdb") or "/usr/lib/postgresql/15/bin/initdb").resolve().parent
# Test servers: no fsync (a machine that crashes may lose them; no test survives that anyway).
FAST = "-c fsync=off"


class PostgresPair:
    def __init__(self) -> None:
        assert (BIN / "pg_basebackup").exists(), (
            "the tests need PostgreSQL's server programs (initdb, pg_ctl, pg_basebackup) on PATH"
        )
        self.directory = Path(tempfile.mkdtemp(prefix="tf-pg-pair-"))
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            shutil.chown(self.directory, self.user, self.user)
        self.primary_port, self.replica_port = free_port(), free_port()
        self.primary, self.replica = self.directory / "primary", self.directory / "replica"
        try:
            self._run("initdb", "-D", str(self.primary), "-U", "postgres", "--auth=trust", "-N")
            self._start(
                self.primary, self.primary_port, "-c wal_level=replica -c max_wal_senders=4"
            )
            self._run(
                "pg_basebackup",
                *("-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres"),
                *("-D", str(self.replica), "-R", "-X", "stream", "-c", "fast"),
            )
            self.replica_start()
        except BaseException:
            self.stop()
            raise

    def url(self, server: str, database: str) -> str:
        port = self.primary_port if server == "primary" else self.replica_port
        return f"postgres://postgres@127.0.0.1:{port}/{database}"

    def sql(self, server: str, query: str, *args: Any, database: str = "postgres") -> list[Any]:
        with psycopg.connect(self.url(server, database), autocommit=True) as connection:
            cursor = connection.execute(query, args or None)
            return cursor.fetchall() if cursor.description else []

    @contextmanager
    def replay_paused(self) -> Iterator[None]:
        """In the block the replica receives the primary's WAL but applies none of it: it lags
        behind everything written from the start of the block."""
        wait_until(self.caught_up, what="the replica to catch up")
        self.sql("replica", "SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            self.sql("replica", "SELECT pg_wal_replay_resume()")

    def caught_up(self) -> bool:
        """Whether the replica has replayed everything the primary has written so far."""
        ((written,),) = self.sql("primary", "SELECT pg_current_wal_insert_lsn()")
        ((gap,),) = self.sql(
            "replica", "SELECT pg_wal_lsn_diff(%s, pg_last_wal_replay_lsn())", written
        )
        return bool(gap <= 0)

    def replica_stop(self) -> None:
        self._pg_ctl(self.replica, "stop", "-m", "fast")

    def replica_start(self) -> None:
        self._start(self.replica, self.replica_port, "-c hot_standby=on")
        wait_until(self._streaming, what="the replica to stream from the primary", timeout=30)

    def stop(self) -> None:
        for data in (self.replica, self.primary):
            if (data / "postmaster.pid").exists():
                self._pg_ctl(data, "stop", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def _streaming(self) -> bool:
        try:
            return bool(self.sql("primary", "SELECT 1 FROM pg_stat_replication"))
        except psycopg.OperationalError:
            return False

    def _start(self, data: Path, port: int, options: str) -> None:
        # -k '': no Unix socket, so the length of the directory's path never matters.
        options = f"-h 127.0.0.1 -p {port} -k '' {FAST} {options}"
        self._pg_ctl(data, "start", "-w", "-t", "30", "-l", f"{data}.log", "-o", options)

    def _pg_ctl(self, data: Path, *args: str) -> None:
        self._run("pg_ctl", "-D", str(data), *args)

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(BIN / program), *args],
            user=self.user,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")
