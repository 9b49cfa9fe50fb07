"""Readiness for systemd: ``sd_notify(3)`` without libsystemd.

Keel's daemons run as ``Type=notify`` units and say ``READY=1`` once they serve (the store:
its client port; the supervisor: its API socket), so that ``systemctl start`` and
``systemctl is-system-running --wait`` (what the boot gate waits for) return only when the
daemon answers, and units ordered after them find it up. Outside systemd
(no ``$NOTIFY_SOCKET``) nothing happens.
"""

from __future__ import annotations

import os
import socket


def take_socket() -> str:
    """Remove ``$NOTIFY_SOCKET`` from this process's environment and return it ("" if none).

    A daemon that starts children should call this first: whatever inherits the variable
    may speak for the unit, and an OCI runtime that sees it (runc, crun) proxies it into
    the container and waits for the *container* to say READY=1 before ``run --detach``
    returns, which a normal container never does.
    """
    return os.environ.pop("NOTIFY_SOCKET", "")


def notify(state: str = "READY=1", address: str | None = None) -> bool:
    """Send ``state`` to systemd's notification socket ``address`` (default: taken from
    the environment with :func:`take_socket`); returns whether there was one."""
    address = take_socket() if address is None else address
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True
