"""Choose QEMU's accelerator: KVM when it really runs a Linux guest here, TCG otherwise.

``/dev/kvm`` existing proves little: on this kind of machine it opens, runs a boot
sector, and then hangs a Linux kernel forever. So the probe boots a real kernel with no
root filesystem under KVM and waits (with a short timeout) for the panic that proves
the kernel got through early boot. The verdict is cached per run in a file, so parallel
workers probe once. ``KEEL_HARNESS_ACCEL=kvm|tcg`` skips the probe.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path

from keel_harness import reaper
from keel_harness.errors import HarnessError

log = logging.getLogger(__name__)

ACCEL_ENV = "KEEL_HARNESS_ACCEL"
TIMEOUT_ENV = "KEEL_HARNESS_KVM_PROBE_TIMEOUT"
DEFAULT_TIMEOUT = 5.0
QEMU = "qemu-system-x86_64"
# Text the kernel prints once it has decompressed itself and run its init code.
_REACHED = (b"Kernel panic", b"VFS: Unable to mount root", b"Run /init")


def kvm_usable(kernel: Path, *, qemu: str = QEMU, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Boot ``kernel`` (no root fs) under KVM; True if it reaches its root-mount panic in time."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    return kernel_runs("kvm", kernel, qemu=qemu, timeout=timeout)


def kernel_runs(accel: str, kernel: Path, *, qemu: str = QEMU, timeout: float) -> bool:
    """Whether ``kernel`` gets through early boot under ``accel`` within ``timeout`` s."""
    argv = [
        qemu, "-accel", accel, "-m", "128", "-smp", "1", "-nodefaults", "-display", "none",
        "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 loglevel=4",
    ]  # fmt: skip
    proc = reaper.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        reaper.kill(proc)
        log.info("%s probe: no kernel progress within %.0f s", accel, timeout)
        return False
    finally:
        reaper.forget(proc)
    ok = any(marker in out for marker in _REACHED)
    log.info("%s probe: exit %s, kernel %s", accel, proc.returncode, "ran" if ok else "did not")
    return ok


def choose(
    *, kernel: Path | None = None, cache: Path | None = None, timeout: float | None = None
) -> str:
    """``kvm`` or ``tcg`` for this run: env override, cached verdict, or a fresh probe.

    Without a ``kernel`` to probe with, KVM is never assumed: TCG is slow but never hangs.
    """
    forced = os.environ.get(ACCEL_ENV, "").strip()
    if forced:
        if forced not in ("kvm", "tcg"):
            raise HarnessError(f"{ACCEL_ENV}={forced!r}: expected 'kvm' or 'tcg'")
        return forced
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    if cache is None:
        return _probe(kernel, timeout)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.exists():
            return cache.read_text().strip()
        verdict = _probe(kernel, timeout)
        cache.write_text(verdict + "\n")
        return verdict


def _probe(kernel: Path | None, timeout: float) -> str:
    if kernel is None:
        return "tcg"
    start = time.monotonic()
    verdict = "kvm" if kvm_usable(kernel, timeout=timeout) else "tcg"
    log.info("accelerator: %s (probe took %.1f s)", verdict, time.monotonic() - start)
    return verdict


TCG_CPU = "qemu64"
"""The CPU TCG emulates: QEMU's own default, the x86-64 baseline Debian is built for.

Not ``max``: boot to SSH, 2 vCPUs, BIOS, 9 alternating rounds: 10.1 s median against
12.2 s for ``max`` (14.5 against 17.6 QEMU CPU-s), faster in every round. The kernel's
part is shorter (it turns on less: XSAVE, 5-level paging, SMAP, protection keys), and
userspace is too: ``Nehalem`` (x86-64-v2) was slower than ``max`` in userspace. Which
instructions cost most under TCG is not pinned down (switching glibc's SSSE3/SSE4 string
functions off by tunable did not show it). See docs/image.md.
"""


def cpu_model(accel: str) -> str:
    """The ``-cpu`` model for ``accel``: the host's under KVM, :data:`TCG_CPU` under TCG."""
    return "host" if accel == "kvm" else TCG_CPU
