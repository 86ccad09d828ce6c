"""A redis-server of a test's own, which the test can kill and start again."""

import subprocess
from pathlib import Path

from bench.ports import free_port
from bench.redis_cluster import wait_answers


class RedisServer:
    """Without persistence by default: started again, it comes back empty. With `directory`
    it keeps its files there, and with `appendonly` an append-only file it reloads."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        appendonly: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        if directory is not None:
            self.args += ["--dir", str(directory)]
        self.args += ["--save", "", "--appendonly", "yes" if appendonly else "no", *extra]
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        wait_answers(self.port, self.process)

    def kill(self) -> None:
        """SIGKILL: nothing is saved on the way out."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
