"""The values that plugins hand to Keel through the hooks.

They are plain, typed dataclasses so that a third-party plugin can build them without
importing anything but ``keel_core``. Components that consume them (the image builder,
the harness, the supervisor) may accept richer subclasses, but must work with these.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class FileContribution:
    """One file a plugin places into the image's root filesystem.

    ``path`` is absolute inside the image (``/usr/lib/systemd/system/keel-store.service``).
    Exactly one of ``content`` and ``source`` is set: literal bytes, or a file on the
    build host to copy.
    """

    path: str
    content: bytes | None = None
    source: Path | None = None
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"image file path must be absolute: {self.path!r}")
        if (self.content is None) == (self.source is None):
            raise ValueError(f"{self.path}: give exactly one of content= and source=")


@dataclass(frozen=True)
class ImageContribution:
    """What one component or platform adds to an image.

    Returned from :func:`keel_core.hookspecs.keel_image_contribution`. ``name`` names the
    contributor in the image manifest and in errors.
    """

    name: str
    packages: Sequence[str] = ()
    """Debian packages to install into the root filesystem."""
    files: Sequence[FileContribution] = ()
    units: Sequence[str] = ()
    """systemd units (already shipped through ``files`` or packages) to enable."""
    disabled_units: Sequence[str] = ()
    """Units that a package enables on install and this image must not run (disabled)."""
    kernel_args: Sequence[str] = ()
    kernel_modules: Sequence[str] = ()
    """Kernel modules (names, e.g. ``virtio_net``) that must stay after pruning."""
    sysusers: Sequence[str] = ()
    """Lines in sysusers.d(5) syntax, e.g. ``u keel-store - "Keel store"``."""
    python_distributions: Sequence[str] = ()
    """Keel distributions (e.g. ``keel-store``) whose code must be installed in /usr."""


NOT_APPLICABLE = 77
"""Exit status of :meth:`HealthCheck.script` on a machine the check does not concern."""


@dataclass(frozen=True)
class HealthCheck:
    """A check that must pass before a boot is marked good.

    ``command`` runs on the machine itself (by ``keel health`` at boot, and by the harness
    over SSH); exit status 0 means healthy. Its output is shown when it fails.

    A component's check is about a service that not every image has: name that service in
    ``unit`` and the check applies only on machines where the unit is installed. Runners
    execute :meth:`script`, never ``command`` directly, so that rule holds everywhere.
    """

    name: str
    command: str
    description: str = ""
    timeout: float = 30.0
    unit: str | None = None
    """The systemd unit this check is about; ``None``: the check applies to every machine."""

    def script(self) -> str:
        """The shell script to run: exits :data:`NOT_APPLICABLE` where ``unit`` is absent."""
        if self.unit is None:
            return self.command
        guard = f"systemctl cat {shlex.quote(self.unit)} >/dev/null 2>&1 || exit {NOT_APPLICABLE}"
        return f"{guard}\n{self.command}"


@runtime_checkable
class ContainerRuntime(Protocol):
    """An OCI runtime the supervisor can drive (runc, crun, ...).

    The supervisor prefers the available runtime with the highest ``priority``.
    """

    name: str
    priority: int

    def available(self) -> bool:
        """Whether this runtime can run containers on this host right now."""

    def command(self) -> Sequence[str]:
        """The argv prefix of the runtime binary (e.g. ``["/usr/bin/runc"]``)."""


@dataclass(frozen=True)
class OutputFormat:
    """One artifact a platform makes from the raw disk (``qcow2``, ``vhd``, ``ova`` ...)."""

    name: str
    filename: str
    convert: Callable[[Path, Path], None]
    """``convert(disk_raw, destination)`` writes the artifact; it must not modify the input."""


@dataclass(frozen=True)
class QemuEmulation:
    """How the harness boots a platform's image under QEMU."""

    firmware: str = "bios"
    """``bios`` (SeaBIOS) or ``uefi`` (OVMF)."""
    machine: str = "q35"
    disk_interface: str = "virtio"
    extra_args: Sequence[str] = ()
    config_channel: str = "fw_cfg"
    """How first-boot config reaches the guest: ``fw_cfg``, ``config-drive``, ``metadata``."""


@dataclass(frozen=True)
class Platform:
    """A place Keel runs: a cloud, a hypervisor, bare metal.

    Returned (in a list) from :func:`keel_core.hookspecs.keel_platforms`.
    """

    name: str
    description: str
    formats: Sequence[OutputFormat] = ()
    kernel_args: Sequence[str] = ()
    kernel_modules: Sequence[str] = ()
    packages: Sequence[str] = ()
    emulation: QemuEmulation | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Free-form facts (metadata endpoint, config source) shown by ``keel platforms``."""
