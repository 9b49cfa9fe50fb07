"""The OCI runtimes Keel ships as plugins: runc, crun and LXC.

Both speak the same command line (``create``, ``start``, ``run --detach``, ``kill``,
``delete``, ``state``, ``exec``), so one class drives them; each plugin only says how to
invoke its binary and whether it works on this host. crun refuses hosts whose cgroups are
in the *hybrid* layout; there it runs inside a private mount namespace with the cgroup2
``unified`` mount removed, which makes crun see a pure v1 host (measured on Keel's build
machines, see docs/supervisor.md).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from keel_core.types import ContainerRuntime
from keel_supervisor import cgroups
from keel_supervisor.model import SupervisorError


@dataclass
class OciRuntime:
    """An OCI runtime binary: satisfies :class:`keel_core.types.ContainerRuntime`."""

    name: str
    priority: int
    binary: str
    wrapper: Sequence[str] = field(default_factory=tuple)
    create_then_start: bool = False
    """Start in two calls, ``create`` then ``start``, instead of ``run --detach``: for
    runtimes that may reap a container that exits before the runtime itself does."""

    def path(self) -> str | None:
        """The runtime binary on ``PATH``, or ``None``."""
        return shutil.which(self.binary)

    def available(self) -> bool:
        """Whether the binary is installed (and, for crun, the cgroup layout is usable)."""
        return self.path() is not None

    def command(self) -> Sequence[str]:
        """The argv prefix that runs the runtime (with its namespace wrapper, if any)."""
        path = self.path()
        if path is None:
            raise SupervisorError(f"{self.binary} is not installed (apt-get install {self.binary})")
        return [*self.wrapper, path]


def runc() -> OciRuntime:
    """runc: works with every cgroup layout, so it is the default."""
    return OciRuntime("runc", 100, "runc")


def crun() -> OciRuntime:
    """crun: faster to start; on a hybrid-cgroup host it runs without the unified mount."""
    wrapper: tuple[str, ...] = ()
    if cgroups.mode() is cgroups.CgroupMode.HYBRID:
        wrapper = (
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            'umount /sys/fs/cgroup/unified && exec "$0" "$@"',
        )
    return OciRuntime("crun", 90, "crun", wrapper, create_then_start=True)


@dataclass
class LxcRuntime(OciRuntime):
    """LXC behind an OCI command-line translator (:mod:`keel_supervisor.lxc`)."""

    def available(self) -> bool:
        """Whether LXC's tools are installed."""
        return all(shutil.which(tool) for tool in ("lxc-execute", "lxc-attach", "lxc-info"))

    def command(self) -> Sequence[str]:
        """The translator, run by this Python."""
        if not self.available():
            raise SupervisorError("LXC is not installed (apt-get install lxc)")
        return [sys.executable, "-m", "keel_supervisor.lxc"]


def lxc() -> OciRuntime:
    """LXC, as CoreOS used it: lowest priority, chosen only by name (``runtime: lxc``)."""
    return LxcRuntime("lxc", 10, "lxc-execute")


def builtin() -> list[ContainerRuntime]:
    """The runtimes this component contributes through ``keel_container_runtimes``."""
    return [runc(), crun(), lxc()]


def choose(runtimes: Sequence[ContainerRuntime], name: str | None = None) -> ContainerRuntime:
    """The runtime called ``name``, or the available one with the highest priority."""
    if name:
        for runtime in runtimes:
            if runtime.name == name:
                if not runtime.available():
                    raise SupervisorError(f"runtime {name!r} is not available on this host")
                return runtime
        known = ", ".join(sorted(r.name for r in runtimes)) or "none"
        raise SupervisorError(f"unknown runtime {name!r}; known: {known}")
    usable = sorted((r for r in runtimes if r.available()), key=lambda r: -r.priority)
    if not usable:
        raise SupervisorError("no container runtime is available: apt-get install runc")
    return usable[0]
