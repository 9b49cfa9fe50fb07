"""A container's root filesystem: the image's read-only layers under an overlay.

Each container gets its own ``upper`` (its changes) and ``work`` directory; the image's
layer directories are shared, read-only lower layers, so starting a container copies
nothing. ``mount`` is idempotent: after a reboot the supervisor mounts again what the
record says.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

from keel_supervisor.model import SupervisorError

MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def is_mounted(path: Path) -> bool:
    """Whether something is mounted exactly at ``path``."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return any(line.split()[4] == target for line in handle)


def mount_overlay(layers: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
    """Mount ``layers`` (lowest first, as the image store lists them) at ``target``."""
    if not layers:
        raise SupervisorError("an image without layers has no root filesystem")
    for directory in (upper, work, target):
        directory.mkdir(parents=True, exist_ok=True)
    if is_mounted(target):
        return
    # overlayfs lists lowerdirs top first.
    lower = ":".join(str(p) for p in reversed(layers))
    options = f"lowerdir={lower},upperdir={upper},workdir={work},index=off"
    if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise SupervisorError(
            f"cannot mount the overlay root filesystem at {target}: "
            f"{os.strerror(err)} (options {options})"
        )


def unmount(target: Path) -> None:
    """Detach the mount at ``target`` (lazily, so a straggling process cannot block ``rm``)."""
    while is_mounted(target):
        if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            raise SupervisorError(f"cannot unmount {target}: {os.strerror(err)}")
