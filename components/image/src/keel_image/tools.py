"""Run the host tools the build needs (mmdebstrap, mkfs.erofs, sfdisk ...) with clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from keel_image.errors import BuildError

PACKAGE_OF = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.erofs": "erofs-utils",
    "mksquashfs": "squashfs-tools",
    "veritysetup": "cryptsetup-bin",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "qemu-img": "qemu-utils",
    "grub-mkimage": "grub-common",
    "busybox": "busybox-static",
    "dmsetup": "dmsetup",
    "depmod": "kmod",
    "zstd": "zstd",
    "readelf": "binutils",
    "strip": "binutils",
}
"""The Debian package that provides each tool, for the "missing tool" hint."""

FILE_PACKAGES = {
    "/usr/lib/grub/i386-pc": "grub-pc-bin",
    "/usr/lib/grub/x86_64-efi": "grub-efi-amd64-bin",
    "/bin/busybox": "busybox-static",
}


def search_path() -> str:
    """PATH plus the sbin directories (mkfs and sfdisk live there; root's PATH may lack them)."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    extra = [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in parts]
    return os.pathsep.join([*parts, *extra])


def require(*tools: str, stage: str) -> None:
    """Fail early, naming the Debian package, when a tool is not installed."""
    missing = [t for t in tools if shutil.which(t, path=search_path()) is None]
    if missing:
        pkgs = sorted({PACKAGE_OF.get(t, t) for t in missing})
        raise BuildError(
            stage,
            f"missing tool(s): {', '.join(missing)}",
            f"apt-get install {' '.join(pkgs)} (in system-packages.txt; ./dev installs them)",
        )


def require_path(path: str | Path, *, stage: str) -> Path:
    """Fail early when a file or directory a package provides is absent."""
    p = Path(path)
    if not p.exists():
        pkg = FILE_PACKAGES.get(str(path), "the package that provides it")
        raise BuildError(stage, f"missing {path}", f"apt-get install {pkg}")
    return p


def run(
    argv: Sequence[str | Path],
    *,
    stage: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    hint: str = "",
) -> str:
    """Run ``argv``; on failure raise :class:`BuildError` with the command's last output lines."""
    args = [str(a) for a in argv]
    full_env = {**os.environ, "LC_ALL": "C.UTF-8", "PATH": search_path(), **(env or {})}
    try:
        exe = shutil.which(args[0], path=full_env["PATH"]) or args[0]
        proc = subprocess.run(
            [exe, *args[1:]], env=full_env, cwd=cwd, input=input, capture_output=True, check=False
        )
    except FileNotFoundError:
        require(args[0], stage=stage)
        raise
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
        tail = "\n    ".join(out[-15:])
        raise BuildError(
            stage,
            f"{Path(args[0]).name} failed (exit {proc.returncode}):\n    {tail}",
            hint,
            output="\n".join(out),
        )
    return proc.stdout.decode(errors="replace")
