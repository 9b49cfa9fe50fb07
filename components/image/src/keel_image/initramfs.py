"""Stage ``initramfs``: a small busybox initramfs that opens /usr through dm-verity.

It holds busybox (static), dmsetup with its libraries, the storage and filesystem
modules (with their dependencies, from the image's own kernel) and ``guest/init``.
The archive is written here, in Python, as a sorted newc cpio with fixed timestamps,
compressed with zstd (gzip with no name or time for kernels without zstd unpacking), so
that equal inputs give equal bytes.
"""

from __future__ import annotations

import gzip
import re
import stat
import subprocess
import sys
from importlib import resources
from pathlib import Path

from keel_image import kmods, tools
from keel_image.cache import code_digest, digest, file_digest
from keel_image.errors import BuildError

STAGE = "initramfs"
VERSION = 1

MODULES = [
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "dm_mod",
    "dm_verity",
    "erofs",
    "squashfs",
    "virtio_net",
    "qemu_fw_cfg",
]
"""Storage drivers for the platforms Keel emulates, and what /usr needs (those the
kernel flavour lacks, e.g. ``ahci`` in the cloud kernel, are skipped); the virtio NIC and
QEMU's fw_cfg too: loaded here (one more module for the same modprobe), the network
interface and the first-boot config exist before udev's coldplug, which otherwise loads
them one process each on the way to DHCP and the fw_cfg reader."""

BUSYBOX = Path("/bin/busybox")
DMSETUP = Path("/sbin/dmsetup")


def init_script() -> bytes:
    """The initramfs's /init (``keel_image/guest/init``)."""
    return (resources.files("keel_image") / "guest" / "init").read_bytes()


def _libraries(binary: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    libs = re.findall(r"(/\S+)\s+\(0x", out)
    return sorted({Path(p) for p in libs})


def host_inputs() -> list[Path]:
    """Host files copied into the initramfs (their digests are part of the cache key)."""
    tools.require_path(BUSYBOX, stage=STAGE)
    tools.require("dmsetup", stage=STAGE)
    return [BUSYBOX, DMSETUP, *_libraries(DMSETUP)]


def key(rootfs_key: str, epoch: int) -> str:
    """Cache key: the kernel (via rootfs), host binaries, the init script, the module list."""
    files = [(str(p), file_digest(p.resolve())) for p in host_inputs()]
    return digest(
        STAGE,
        VERSION,
        code_digest(sys.modules[__name__], kmods),
        rootfs_key,
        files,
        digest(init_script().hex()),
        MODULES,
        epoch,
    )


class Cpio:
    """A newc ("070701") archive writer with fixed owners and times."""

    def __init__(self, mtime: int) -> None:
        self.mtime = mtime
        self.entries: dict[str, tuple[int, bytes, tuple[int, int]]] = {}

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        """Add an entry (parents must be added too; ``dir``/``file`` do that)."""
        self.entries[name.strip("/")] = (mode, data, rdev)

    def dir(self, name: str) -> None:
        """Add a directory and its parents."""
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), (stat.S_IFDIR | 0o755, b"", (0, 0)))

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        """Add a regular file and its parent directories."""
        parent = name.strip("/").rpartition("/")[0]
        if parent:
            self.dir(parent)
        self.add(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link."""
        parent = name.strip("/").rpartition("/")[0]
        if parent:
            self.dir(parent)
        self.add(name, stat.S_IFLNK | 0o777, target.encode())

    def bytes(self) -> bytes:
        """The archive, entries sorted by name, ended by the trailer."""
        out = bytearray()
        names = sorted(self.entries)
        for ino, name in enumerate([*names, "TRAILER!!!"], start=1):
            mode, data, (major, minor) = self.entries.get(name, (0, b"", (0, 0)))
            nlink = 2 if stat.S_ISDIR(mode) else 1
            raw_name = name.encode() + b"\0"
            fields = [
                ino if name != "TRAILER!!!" else 0,
                mode,
                0,
                0,
                nlink,
                self.mtime,
                len(data),
                0,
                0,
                major,
                minor,
                len(raw_name),
                0,
            ]
            out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw_name
            out += b"\0" * (-len(out) % 4)
            out += data
            out += b"\0" * (-len(out) % 4)
        return bytes(out)


def build(rootfs_tree: Path, kernel_version: str, dest: Path, *, epoch: int) -> None:
    """Write the gzip-compressed initramfs for ``kernel_version`` to ``dest``."""
    archive = Cpio(epoch)
    for d in ("dev", "proc", "sys", "sysroot", "run", "tmp", "bin", "sbin", "lib", "lib64", "usr"):
        archive.dir(d)
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3))
    archive.file("init", init_script(), 0o755)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.file("sbin/dmsetup", DMSETUP.read_bytes(), 0o755)
    for lib in _libraries(DMSETUP):
        archive.file(str(lib), lib.resolve().read_bytes(), 0o755)
    moddir = rootfs_tree / "usr/lib/modules" / kernel_version
    if not moddir.is_dir():
        raise BuildError(STAGE, f"no modules for kernel {kernel_version} in the root tree")
    index = kmods.ModuleIndex(moddir)
    order = index.closure(MODULES, stage=STAGE, optional=True)
    # Where busybox modprobe looks (lib/modules/`uname -r`), with the modules.dep lines
    # of these modules, so that /init loads them all with one `modprobe -a`.
    kdir = f"lib/modules/{kernel_version}"
    for rel in order:
        archive.file(f"{kdir}/{rel}", (moddir / rel).read_bytes())
    archive.file(f"{kdir}/modules.dep", _modules_dep(index, order).encode())
    names = [kmods.module_name(rel) for rel in order]
    archive.file("lib/modules/load", ("\n".join(names) + "\n").encode())
    dest.write_bytes(_compress(archive.bytes(), rootfs_tree / "boot" / f"config-{kernel_version}"))


def _modules_dep(index: kmods.ModuleIndex, order: list[str]) -> str:
    """modules.dep lines (``path: deps``, deepest last, as depmod writes) for ``order``."""
    lines = []
    for rel in order:
        deps = [index.path_of[d] for d in index.deps_of[kmods.module_name(rel)]]
        lines.append(f"{rel}: {' '.join(deps)}".rstrip() + "\n")
    return "".join(lines)


def _compress(archive: bytes, kernel_config: Path) -> bytes:
    """zstd -19 if the kernel unpacks it (Debian's do), else gzip; same bytes each time.

    zstd: 2.7 MB where gzip made 3.7, so less for GRUB to read and unpacked by the kernel
    several times faster (0.3 s for gzip under emulation).
    """
    config = kernel_config.read_text() if kernel_config.exists() else ""
    if "CONFIG_RD_ZSTD=y" in config:
        tools.require("zstd", stage=STAGE)
        proc = subprocess.run(
            ["zstd", "-19", "-q", "-c", "--no-progress"],
            input=archive,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(STAGE, f"zstd failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    return gzip.compress(archive, compresslevel=6, mtime=0)
