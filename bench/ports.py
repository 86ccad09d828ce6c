"""Loopback ports for the servers that benchmarks and tests start themselves.

A port is checked free here and bound later by another process. One from the kernel's
ephemeral range (port 0's) can be taken meanwhile by any outgoing connection, a test's
clients or a Redis node's links to its peers: CI once lost a run to a cluster node that could
not bind. So ports come from below that range, and none is handed out twice in a process.
"""

import random
import socket
from pathlib import Path

_handed_out: set[int] = set()


def free_port(*, also: tuple[int, ...] = ()) -> int:
    """A free port below the ephemeral range, never handed out before in this process, with
    the ports `also` above it free too (a Redis Cluster node binds its bus port 10,000 up)."""
    offsets = (0, *also)
    high = _ephemeral_low() - max(offsets)
    while True:
        port = random.randrange(10_000, high)
        wanted = {port + offset for offset in offsets}
        if wanted & _handed_out:
            continue
        try:
            for candidate in wanted:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        _handed_out.update(wanted)
        return port


def _ephemeral_low() -> int:
    """The first port of the range the kernel picks outgoing ports from (Linux's default
    32768 where it does not say)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
