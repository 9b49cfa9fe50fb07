"""Networks of the harness: the forwarded SSH port and a cluster's private segment.

The private segment is a ``vde_switch --hub`` on a unix socket in the run's directory:
only the machines plugged into it see each other's frames; it has no host interface, no
multicast socket and no route anywhere. Addresses come from 192.0.2.0/24 (TEST-NET-1),
which no host interface uses.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
from pathlib import Path

from keel_harness import reaper
from keel_harness.errors import HarnessError

PRIVATE_NET = ipaddress.IPv4Network("192.0.2.0/24")
FIRST_HOST = 11


def private_address(index: int) -> ipaddress.IPv4Interface:
    """The private address of the ``index``-th machine (0-based): 192.0.2.11/24, .12, ..."""
    host = FIRST_HOST + index
    if not 0 < host < PRIVATE_NET.num_addresses - 1:
        raise HarnessError(f"no private address for machine #{index} in {PRIVATE_NET}")
    return ipaddress.IPv4Interface(f"{PRIVATE_NET[host]}/{PRIVATE_NET.prefixlen}")


class PrivateSegment:
    """A vde hub only the cluster's machines are plugged into; stopped with the cluster."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = directory.with_suffix(".log")

    def start(self, timeout: float = 10.0) -> None:
        """Start the hub and wait until its control socket exists."""
        binary = shutil.which("vde_switch")
        if binary is None:
            raise HarnessError("vde_switch is not installed (Debian package vde2)")
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        # stdin stays an open pipe: vde_switch treats EOF on stdin as "quit".
        with self._log.open("wb") as log:
            self._proc = reaper.spawn(
                [binary, "--hub", "--sock", str(self.socket)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not (self.socket / "ctl").exists():
            if self._proc.poll() is not None:
                raise HarnessError(
                    f"vde_switch exited with {self._proc.returncode}: {self._log.read_text()}"
                )
            if time.monotonic() > deadline:
                raise HarnessError(f"vde_switch made no socket in {self.socket} in {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the hub (the machines on it should be stopped first)."""
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            reaper.stop(self._proc)
            self._proc = None
        shutil.rmtree(self.socket, ignore_errors=True)

    @property
    def running(self) -> bool:
        """Whether the hub process is alive."""
        return self._proc is not None and self._proc.poll() is None
