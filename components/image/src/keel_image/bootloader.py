"""GRUB for BIOS and UEFI, the ESP, and the slot files that carry each slot's kernel line.

One ``grub.cfg`` (``guest/grub.cfg``) on the ESP serves both firmwares: it reads the
boot-counting variables from ``keel/grubenv`` and sources ``keel/slot-<slot>.cfg``,
which loads that slot's kernel and initramfs with its kernel arguments (among them the
verity root hash of the slot's /usr). GRUB images come from Debian's grub-pc-bin and
grub-efi-amd64-bin through ``grub-mkimage``; no grub-install, no loop device.
"""

from __future__ import annotations

import os
import shutil
import struct
from importlib import resources
from pathlib import Path

from keel_image import tools

GRUB_PC = Path("/usr/lib/grub/i386-pc")
GRUB_EFI = Path("/usr/lib/grub/x86_64-efi")
COMMON_MODULES = [
    "part_gpt",
    "fat",
    "search",
    "search_fs_uuid",
    "normal",
    "linux",
    "echo",
    "test",
    "loadenv",
    "serial",
    "terminal",
    "sleep",
    "configfile",
    "gzio",
]
GRUBENV_SIZE = 1024


def grub_cfg() -> bytes:
    """The shared ``grub.cfg``."""
    return (resources.files("keel_image") / "guest" / "grub.cfg").read_bytes()


def grubenv(values: dict[str, str]) -> bytes:
    """A GRUB environment block: exactly 1024 bytes, padded with ``#``."""
    text = "# GRUB Environment Block\n" + "".join(f"{k}={v}\n" for k, v in values.items())
    raw = text.encode()
    if len(raw) > GRUBENV_SIZE:
        raise ValueError("grub environment too large")
    return raw + b"#" * (GRUBENV_SIZE - len(raw))


def slot_cfg(slot: str, kernel_args: list[str]) -> bytes:
    """GRUB commands that load ``slot``'s kernel and initramfs.

    Under BIOS through the 16-bit boot protocol (``linux16``: the kernel's own real-mode
    setup code runs, as with QEMU's ``-kernel`` or RHEL 7's GRUB), not GRUB's 32-bit entry:
    under TCG, from ``boot`` to the kernel's first line took 2.3 s through the 32-bit entry
    and 0.7 s through the 16-bit one, same kernel, initramfs and loading time (0.7 s).
    """
    args = " ".join([f"keel.slot={slot}", *kernel_args])
    kernel = f"($root)/keel/{slot}/vmlinuz"
    initrd = f"($root)/keel/{slot}/initrd.img"
    return (
        f"# slot {slot}: written by keel-image (the updater rewrites it for a new /usr)\n"
        'if [ "$grub_platform" = pc ]; then\n'
        f"    linux16 {kernel} {args}\n"
        f"    initrd16 {initrd}\n"
        "else\n"
        f"    linux {kernel} {args}\n"
        f"    initrd {initrd}\n"
        "fi\n"
    ).encode()


def _early_cfg(work: Path, esp_uuid: str) -> Path:
    early = work / "early.cfg"
    early.write_text(
        f"search --no-floppy --fs-uuid --set=root {esp_uuid}\nset prefix=($root)/grub\n"
    )
    return early


def grub_images(work: Path, esp_uuid: str, *, stage: str) -> tuple[Path, Path]:
    """Build GRUB's BIOS core image and its UEFI executable; both find the ESP by UUID."""
    tools.require("grub-mkimage", stage=stage)
    tools.require_path(GRUB_PC, stage=stage)
    tools.require_path(GRUB_EFI, stage=stage)
    early = _early_cfg(work, esp_uuid)
    core = work / "core.img"
    tools.run(
        [
            "grub-mkimage",
            "-O",
            "i386-pc",
            "-d",
            GRUB_PC,
            "-o",
            core,
            "-c",
            early,
            "-p",
            "/grub",
            "biosdisk",
            "linux16",
            *COMMON_MODULES,
        ],
        stage=stage,
    )
    efi = work / "BOOTX64.EFI"
    tools.run(
        [
            "grub-mkimage",
            "-O",
            "x86_64-efi",
            "-d",
            GRUB_EFI,
            "-o",
            efi,
            "-c",
            early,
            "-p",
            "/grub",
            *COMMON_MODULES,
        ],
        stage=stage,
    )
    return core, efi


def boot_sector() -> bytes:
    """GRUB's 512-byte boot.img (written into the MBR by :mod:`keel_image.disk`)."""
    return (GRUB_PC / "boot.img").read_bytes()


def _set_fat32_serial(image: Path, serial: int) -> None:
    """Write the volume serial (``--invariant`` fixes it to 1234-ABCD) into both boot sectors."""
    with image.open("r+b") as f:
        for sector in (0, 6):  # FAT32 keeps a backup boot sector at sector 6
            f.seek(sector * 512 + 0x43)
            f.write(struct.pack("<I", serial))


def make_esp(
    dest: Path, *, size_mib: int, serial: str, files: dict[str, bytes], epoch: int, stage: str
) -> None:
    """Make a FAT32 ESP holding ``files`` (path on the ESP -> bytes), all dated ``epoch``."""
    tools.require("mkfs.vfat", "mcopy", "mmd", stage=stage)
    dest.unlink(missing_ok=True)
    tools.run(
        [
            "mkfs.vfat",
            "-F",
            "32",
            "-S",
            "512",
            "-s",
            "1",
            "-n",
            "EFI-SYSTEM",
            "--invariant",
            "-C",
            dest,
            str(size_mib * 1024),
        ],
        stage=stage,
    )
    _set_fat32_serial(dest, int(serial, 16))
    staging = dest.parent / "esp-files"
    shutil.rmtree(staging, ignore_errors=True)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1"}
    dirs = sorted({str(Path(p).parent) for p in files} - {"."})
    all_dirs = sorted({str(parent) for d in dirs for parent in [Path(d), *Path(d).parents]} - {"."})
    if all_dirs:
        tools.run(["mmd", "-i", dest, *[f"::/{d}" for d in all_dirs]], stage=stage, env=env)
    for path in sorted(files):
        src = staging / path
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(files[path])
        os.utime(src, (epoch, epoch))
        tools.run(["mcopy", "-m", "-i", dest, src, f"::/{path}"], stage=stage, env=env)
    shutil.rmtree(staging)
