"""From an image config and a :class:`ContainerConfig` to an OCI runtime ``config.json``.

The mapping follows the image-spec's ``conversion.md``: ``Entrypoint + Cmd`` become
``process.args`` (a user's command replaces ``Cmd``, a user's entrypoint replaces both),
``Env`` is merged under the user's env, ``WorkingDir`` becomes ``cwd`` and ``User`` is
resolved against the image's own ``/etc/passwd`` and ``/etc/group``. Security defaults
are the ones container engines ship: the capability set below, no-new-privileges, the
usual masked and read-only paths; a user widens them only explicitly (``cap_add``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keel_supervisor.model import ContainerConfig, SupervisorError

DEFAULT_CAPABILITIES = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)
"""The set docker, podman and containerd give a container; runc/crun apply what we list."""

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD = 100_000

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def process_args(config: ContainerConfig, image: Mapping[str, Any]) -> list[str]:
    """The argv of the container's first process, docker's way."""
    entrypoint = (
        config.entrypoint if config.entrypoint is not None else image.get("Entrypoint") or []
    )
    if config.command is not None:
        cmd = config.command
    elif config.entrypoint is not None:
        cmd = []
    else:
        cmd = image.get("Cmd") or []
    args = [*entrypoint, *cmd]
    if not args:
        raise SupervisorError(
            f"image {config.image!r} has no Entrypoint or Cmd: give a command to run"
        )
    return args


def environment(config: ContainerConfig, image: Mapping[str, Any]) -> list[str]:
    """The image's Env overridden by the user's, with a default PATH if none is set."""
    merged: dict[str, str] = {}
    for item in image.get("Env") or []:
        key, _, value = item.partition("=")
        merged[key] = value
    merged.update(config.env)
    merged.setdefault("PATH", DEFAULT_PATH.removeprefix("PATH="))
    if config.hostname:
        merged.setdefault("HOSTNAME", config.hostname)
    return [f"{k}={v}" for k, v in merged.items()]


def _lookup(db: Path, name: str, field_count: int) -> list[str] | None:
    try:
        lines = db.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= field_count and fields[0] == name:
            return fields
    return None


def resolve_user(spec: str | None, rootfs: Path) -> tuple[int, int]:
    """``uid``, ``uid:gid``, ``name`` or ``name:group`` resolved in the image's own files."""
    if not spec:
        return 0, 0
    user, _, group = spec.partition(":")
    if user.isdigit():
        uid, gid = int(user), 0
        entry = None
    else:
        entry = _lookup(rootfs / "etc/passwd", user, 4)
        if entry is None:
            raise SupervisorError(f"user {user!r} is not in the image's /etc/passwd; give a uid")
        uid, gid = int(entry[2]), int(entry[3])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gentry = _lookup(rootfs / "etc/group", group, 3)
            if gentry is None:
                raise SupervisorError(
                    f"group {group!r} is not in the image's /etc/group; give a gid"
                )
            gid = int(gentry[2])
    return uid, gid


def capabilities(config: ContainerConfig) -> list[str]:
    """The default set, plus ``cap_add``, minus ``cap_drop`` (``ALL`` works in both)."""

    def norm(name: str) -> str:
        name = name.upper()
        return name if name.startswith("CAP_") or name == "ALL" else f"CAP_{name}"

    caps = set(DEFAULT_CAPABILITIES)
    drops = {norm(c) for c in config.cap_drop}
    if "ALL" in drops:
        caps.clear()
    caps -= drops
    adds = {norm(c) for c in config.cap_add}
    if "ALL" in adds:
        raise SupervisorError("cap_add: ALL is not supported; list the capabilities you need")
    caps |= adds
    return sorted(caps)


def resources(config: ContainerConfig) -> dict[str, Any]:
    """``linux.resources`` for memory, cpus and pids (v1 names; runtimes convert for v2)."""
    out: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    res = config.resources
    if res.memory is not None:
        # No swap beyond the limit, so that going over it is an OOM kill, not a slow swap.
        out["memory"] = {"limit": res.memory, "swap": res.memory}
    if res.cpus is not None:
        out["cpu"] = {"quota": max(1000, math.ceil(res.cpus * CPU_PERIOD)), "period": CPU_PERIOD}
    if res.pids is not None:
        out["pids"] = {"limit": res.pids}
    return out


def base_mounts() -> list[dict[str, Any]]:
    """The kernel filesystems every container gets (the runtime's ``spec`` defaults)."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]


def build(
    config: ContainerConfig,
    image: Mapping[str, Any],
    *,
    container_id: str,
    rootfs: Path,
    volume_dirs: Mapping[str, Path],
    netns: Path | None,
    etc_files: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """The complete ``config.json`` for one container.

    ``volume_dirs`` maps each named volume to its directory; ``netns`` is the network
    namespace to join (``None`` with ``network: host`` shares the host's);
    ``etc_files`` bind-mounts files such as ``/etc/hosts`` and ``/etc/resolv.conf``.
    """
    uid, gid = resolve_user(config.user or image.get("User") or None, rootfs)
    caps = capabilities(config)
    mounts = base_mounts()
    for target, source in (etc_files or {}).items():
        mounts.append(
            {
                "destination": target,
                "type": "bind",
                "source": str(source),
                "options": ["rbind", "ro"],
            }
        )
    for vol in config.volumes:
        if vol.is_bind:
            source = Path(vol.source)
            if not source.exists():
                raise SupervisorError(f"bind mount source {vol.source} does not exist on the host")
        else:
            source = volume_dirs[vol.source]
        mounts.append(
            {
                "destination": vol.target,
                "type": "bind",
                "source": str(source),
                "options": ["rbind", "ro" if vol.read_only else "rw"],
            }
        )
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
    ]
    if config.network != "host":
        namespaces.append({"type": "network", "path": str(netns)} if netns else {"type": "network"})
    annotations = {f"org.opencontainers.image.label.{k}": v for k, v in config.labels.items()}
    annotations["io.keel.image"] = config.image
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "root": {"path": str(rootfs), "readonly": config.read_only},
        "hostname": config.hostname or container_id[:12],
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": process_args(config, image),
            "env": environment(config, image),
            "cwd": config.workdir or image.get("WorkingDir") or "/",
            "capabilities": dict.fromkeys(("bounding", "effective", "permitted"), caps),
            "noNewPrivileges": config.no_new_privileges,
        },
        "mounts": mounts,
        "linux": {
            "cgroupsPath": f"/keel/{container_id}",
            "resources": resources(config),
            "namespaces": namespaces,
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
        "annotations": annotations,
    }
    if config.network == "host":
        # A read-only /sys is not mountable without its own network namespace: bind it instead.
        spec["mounts"] = [
            {
                "destination": "/sys",
                "type": "bind",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            }
            if m["destination"] == "/sys"
            else m
            for m in mounts
        ]
    return spec
