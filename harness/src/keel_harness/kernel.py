"""A Debian kernel for the harness's own use: the KVM probe and fast self-test guests.

Images carry their own kernel; the harness needs one only to decide whether KVM really
runs a Linux guest here (a boot sector runs fine under a broken KVM that hangs a real
kernel) and for its busybox self-tests. It is fetched with ``apt-get download`` (Debian's
own client, the package ``linux-image-cloud-amd64`` points at) and unpacked with
``dpkg-deb``, once per cache directory.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from keel_harness.errors import HarnessError

META_PACKAGE = "linux-image-cloud-amd64"


@dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel: its ``vmlinuz`` and its modules directory."""

    package: str
    vmlinuz: Path
    modules: Path

    def module(self, name: str) -> Path | None:
        """The ``.ko`` file of module ``name`` (``virtio_net``), or None if built in."""
        for suffix in (".ko", ".ko.xz", ".ko.zst"):
            found = sorted(self.modules.rglob(name + suffix))
            if found:
                return found[0]
        return None


def cache_dir() -> Path:
    """Where the harness keeps downloads: ``$KEEL_HARNESS_CACHE`` or ``~/.cache/keel-harness``."""
    env = os.environ.get("KEEL_HARNESS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "keel-harness"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise HarnessError(f"{argv[0]} is not installed (needed to fetch a kernel)") from exc
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def resolve_package(meta: str = META_PACKAGE) -> str:
    """The versioned kernel package (``linux-image-6.1.0-56-cloud-amd64``) ``meta`` depends on."""
    out = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", meta])
    match = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not match:
        raise HarnessError(f"apt-cache knows no kernel behind {meta} (did apt-get update run?)")
    return match.group(1)


def debian_kernel(root: Path | None = None, meta: str = META_PACKAGE) -> Kernel:
    """Download (once) and unpack the kernel ``meta`` points at; safe across processes."""
    root = (root or cache_dir()) / "kernel"
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pointer = root / f"{meta}.current"
        package = pointer.read_text().strip() if pointer.exists() else resolve_package(meta)
        tree = root / package
        if not (tree / ".complete").exists():
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                _run(["apt-get", "download", package], cwd=Path(tmp))
                debs = list(Path(tmp).glob("*.deb"))
                if not debs:
                    raise HarnessError(f"apt-get download {package} produced no .deb")
                unpacked = Path(tmp) / "tree"
                _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
                if tree.exists():
                    shutil.rmtree(tree)
                unpacked.rename(tree)
            (tree / ".complete").touch()
        pointer.write_text(package + "\n")
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
    modules = sorted((tree / "lib" / "modules").glob("*"))
    if not vmlinuz or not modules:
        raise HarnessError(f"{package} has no boot/vmlinuz-* or lib/modules/* (in {tree})")
    return Kernel(package, vmlinuz[0], modules[0])
