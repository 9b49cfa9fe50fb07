"""State shared by every machine of one harness run: key pair, accelerator, sizing, folders."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from functools import cached_property
from pathlib import Path
from typing import Any

from keel_harness import accel, kernel, ssh
from keel_harness.errors import HarnessError
from keel_harness.machine import MachineConfig

log = logging.getLogger(__name__)


def vcpus_per_machine(machines: int, workers: int = 1, cores: int | None = None) -> int:
    """vCPUs for each of ``machines`` booted at once by each of ``workers``.

    Total vCPUs stay at or under the host's cores when possible (oversubscribing TCG
    vCPUs is slower than giving each machine one); never less than one.
    """
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, machines * workers))


def memory_per_machine(machines: int) -> int:
    """MiB of guest memory: 1 GiB alone, 768 MiB each in a cluster (several fit easily)."""
    return 1024 if machines == 1 else 768


class HarnessRun:
    """One run's key, accelerator verdict and directories; makes machine configs."""

    def __init__(
        self,
        root: Path,
        *,
        accel_cache: Path | None = None,
        firmware: str = "bios",
        boot_timeout: float = 600.0,
        workers: int = 1,
    ) -> None:
        self.root = root
        self.accel_cache = accel_cache
        self.firmware = firmware
        self.boot_timeout = boot_timeout
        self.workers = workers
        self._indices = itertools.count(1)
        root.mkdir(parents=True, exist_ok=True)

    @cached_property
    def key(self) -> ssh.KeyPair:
        """The run's ed25519 key pair (generated on first use)."""
        return ssh.generate_key(self.root / "id_ed25519")

    @cached_property
    def accel(self) -> str:
        """``kvm`` or ``tcg``, probed once per run (see :mod:`keel_harness.accel`)."""
        probe_kernel: Path | None = None
        if not os.environ.get(accel.ACCEL_ENV) and os.access("/dev/kvm", os.R_OK | os.W_OK):
            try:
                probe_kernel = kernel.debian_kernel().vmlinuz
            except HarnessError as exc:
                log.warning("no kernel to probe KVM with (%s); using tcg", exc)
        return accel.choose(kernel=probe_kernel, cache=self.accel_cache)

    def config(self, name: str, *, machines: int = 1, **overrides: Any) -> MachineConfig:
        """A :class:`MachineConfig` sized for ``machines`` booted together, with the run's key."""
        config = MachineConfig(
            name=name,
            firmware=self.firmware,
            memory_mib=memory_per_machine(machines),
            cpus=vcpus_per_machine(machines, self.workers),
            accel=self.accel,
            key=self.key,
            boot_timeout=self.boot_timeout,
            index=next(self._indices),
        )
        return dataclasses.replace(config, **overrides)
