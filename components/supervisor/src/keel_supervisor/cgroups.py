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

    ``cgroups_path`` is the container's ``linux.cgroupsPath`` (``/keel/<id>``); cgroups a
    runtime made below it (LXC's ``lxc.payload.<id>``) count too. Returns ``None`` when the
    cgroup is gone or the kernel does not report it.
    """
    rel = cgroups_path.lstrip("/")
    found: int | None = None
    for base, name in (
        (root / "memory" / rel, "memory.oom_control"),
        (root / rel, "memory.events"),
    ):
        if not base.is_dir():
            continue
        for path in [base / name, *base.glob(f"*/{name}")]:
            try:
                text = path.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    found = (found or 0) + int(value)
    return found


def prune(cgroups_path: str, root: Path = CGROUP_ROOT) -> None:
    """Remove what a runtime left of a container's cgroups, and empty parents.

    runc and crun remove the container's own cgroup but not the parents they made; LXC
    leaves sub-cgroups of its own (``lxc.pivot``, ``lxc.monitor.*``). Only empty cgroups can
    be removed, so a cgroup still in use is never touched.
    """
    rel = Path(cgroups_path.lstrip("/"))
    if str(rel) in ("", "."):
        return
    hierarchies = [root, *(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    for hierarchy in hierarchies:
        target = hierarchy / rel
        if target.is_dir() and hierarchy != target:
            for sub in sorted(target.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                target.rmdir()
        parent = hierarchy / rel.parent
        if str(rel.parent) not in ("", ".") and parent.is_dir():
            with contextlib.suppress(OSError):  # still used by another container, or not ours
                parent.rmdir()
