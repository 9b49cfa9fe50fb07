"""What the harness keeps of a failed test: per machine, the console, journal and failed units.

Everything goes under ``<artifacts root>/<test id>/<machine>/``; collection never raises
(a dead machine still leaves its console and QEMU log behind).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keel_harness.machine import Machine

# (file name, command run in the guest)
GUEST_FILES = (
    ("journal.txt", "journalctl -b --no-pager -o short-monotonic"),
    ("systemctl-failed.txt", "systemctl --failed --no-pager"),
    ("systemctl-list-units.txt", "systemctl list-units --all --no-pager"),
)
HOST_FILES = ("console.log", "qemu.log", "qemu.argv", "config.json")


def test_dir(root: Path, nodeid: str) -> Path:
    """``root/<nodeid made safe for a path>``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")
    return root / safe


RECONNECT_SECONDS = 60.0
"""How long collecting waits for SSH to come back on a machine that had it this boot."""


def _unreachable(machine: Machine) -> str:
    """Why the guest's files cannot be read now ("" if they can): a boot that never
    answered SSH is not waited for again (that wait is the boot timeout, 600 s, per
    file: it once held a failed CI run for half an hour), and a lost session gets
    :data:`RECONNECT_SECONDS` to come back."""
    if machine.boot_seconds is None:
        return "SSH never answered in this boot"
    try:
        machine.wait_for_ssh(timeout=RECONNECT_SECONDS)
    except Exception as exc:
        return str(exc)
    return ""


def collect(machines: Iterable[Machine], destination: Path) -> list[Path]:
    """Save each machine's artifacts under ``destination/<machine>/``; returns the folders."""
    saved = []
    for machine in machines:
        folder = destination / machine.name
        folder.mkdir(parents=True, exist_ok=True)
        for name in HOST_FILES:
            source = machine.state_dir / name
            if source.exists():
                shutil.copyfile(source, folder / name)
        if machine.is_running and machine.config.key is not None:
            why = _unreachable(machine)
            for name, command in GUEST_FILES:
                if why:
                    (folder / name).write_text(f"(not collected: {why})\n")
                    continue
                try:
                    status, out = machine.execute(command, timeout=120)
                    (folder / name).write_text(out if status == 0 else f"(exit {status})\n{out}")
                except Exception as exc:  # a fault here must not hide the test's own failure
                    why = str(exc)
                    (folder / name).write_text(f"(not collected: {exc})\n")
        saved.append(folder)
    return saved
