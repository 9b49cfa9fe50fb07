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


def notify(state: str = "READY=1") -> bool:
    """Send ``state`` to systemd's notification socket; returns whether there was one.

    The variable is removed afterwards (``sd_notify``'s ``unset_environment``), so child
    processes (the supervisor's container monitors) never speak for the unit.
    """
    address = os.environ.pop("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True
