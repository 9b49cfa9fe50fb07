"""Helpers for tests of Keel and of Keel plugins.

Kept free of pytest so that benchmarks and test daemons can use them too.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000
_handed_out: set[int] = set()
_rng = random.Random()


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on, for a server a test starts next.

    Not ``bind(0)``: that draws from the kernel's ephemeral range, where the kernel also
    picks the source port of every outgoing connection, so between the choice and the
    server's own bind a client connection can take the port (seen in CI as "Address
    already in use"). Ports here come from below that range, are checked by binding,
    and are handed out at most once per process.
    """
    high = _ephemeral_low()
    if high - LOWEST < 1000:
        raise RuntimeError(f"{EPHEMERAL_RANGE} leaves too few ports below it (starts at {high})")
    for _ in range(200):
        port = _rng.randrange(LOWEST, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port on {host} in {LOWEST}-{high - 1} after 200 tries")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time that process ``pid`` (all its threads) has used so far.

    Raises OSError if the process is gone.
    """
    # The command name (field 2) may hold spaces or parentheses: split after its last ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
