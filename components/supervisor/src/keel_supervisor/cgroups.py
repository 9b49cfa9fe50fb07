"""Which cgroup layout this host has, and what the kernel says about a container's cgroup.

The layout decides which runtime works here: runc copes with every layout; crun refuses
the *hybrid* layout (v1 controllers plus a cgroup2 ``unified`` mount) unless it runs in a
mount namespace without that mount (see :mod:`keel_supervisor.runtimes`).
"""

from __future__ import annotations

import contextlib
import os
from enum import StrEnum
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP2_SUPER_MAGIC = 0x63677270


class CgroupMode(StrEnum):
    """The three layouts libcrun distinguishes (``libcrun_get_cgroup_mode``)."""

    UNIFIED = "unified"
    HYBRID = "hybrid"
    LEGACY = "legacy"


def _fs_type(path: Path) -> str:
    """The filesystem type name of the mount at ``path``, from /proc/self/mountinfo."""
    best = ""
    kind = ""
    target = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mount_point = left.split()[4]
        if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) and len(
            mount_point
        ) >= len(best):
            best, kind = mount_point, right.split()[0]
    return kind


def mode(root: Path = CGROUP_ROOT) -> CgroupMode:
    """Detect the layout the way runtimes do: by the filesystem type of the cgroup mounts."""
    if _fs_type(root) == "cgroup2":
        return CgroupMode.UNIFIED
    unified = root / "unified"
    if unified.is_dir() and os.path.ismount(unified) and _fs_type(unified) == "cgroup2":
        return CgroupMode.HYBRID
    return CgroupMode.LEGACY


def memory_events(cgroups_path: str, root: Path = CGROUP_ROOT) -> int | None:
    """How many times the kernel OOM-killed a process in the container's memory cgroup.

    ``cgroups_path`` is the container's ``linux.cgroupsPath`` (``/keel/<id>``). Returns
    ``None`` when the cgroup is gone or the kernel does not report it.
    """
    rel = cgroups_path.lstrip("/")
    candidates = [
        (root / "memory" / rel / "memory.oom_control", "oom_kill"),
        (root / rel / "memory.events", "oom_kill"),
    ]
    for path, key in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return None


def prune(cgroups_path: str, root: Path = CGROUP_ROOT) -> None:
    """Remove the (empty) parent directories a runtime left after deleting a container."""
    parent = Path(cgroups_path.lstrip("/")).parent
    if str(parent) in ("", "."):
        return
    for hierarchy in [root, *(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []:
        path = hierarchy / parent
        if path.is_dir():
            with contextlib.suppress(OSError):  # still used by another container, or not ours
                path.rmdir()
