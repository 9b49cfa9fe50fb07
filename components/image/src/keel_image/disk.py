"""Disk assembly: the GPT layout, partition contents copied in, GRUB's BIOS boot code.

Layout (Flatcar's order): EFI-SYSTEM | BIOS-BOOT | USR-A | USR-B | OEM | ROOT, every
partition 2 MiB aligned, with Discoverable Partitions type GUIDs where one exists and
GUIDs derived from the image name, so that the same definition gives the same table.
The table is written by ``sfdisk`` on the plain file; contents are copied sparsely.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from keel_image import tools

MIB = 1 << 20
SECTOR = 512
ALIGN = 2 * MIB

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
USR_X86_64_TYPE = "8484680C-9521-48C6-9C11-B0720656F69E"  # DPS /usr x86-64
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # DPS root x86-64
LINUX_DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


@dataclass(frozen=True)
class Partition:
    """One GPT entry. ``start`` and ``size`` are in bytes."""

    number: int
    label: str
    type_guid: str
    uuid: str
    start: int
    size: int

    @property
    def start_lba(self) -> int:
        """First sector."""
        return self.start // SECTOR


def layout(sizes_mib: dict[str, int], seed: str) -> tuple[list[Partition], int, str]:
    """Partitions, total disk size in bytes and the disk GUID for ``sizes_mib``.

    ``sizes_mib`` has keys esp, bios_boot, usr, oem, root (the definition's partitions).
    """
    order = [
        ("EFI-SYSTEM", ESP_TYPE, sizes_mib["esp"]),
        ("BIOS-BOOT", BIOS_BOOT_TYPE, sizes_mib["bios_boot"]),
        ("USR-A", USR_X86_64_TYPE, sizes_mib["usr"]),
        ("USR-B", USR_X86_64_TYPE, sizes_mib["usr"]),
        ("OEM", LINUX_DATA_TYPE, sizes_mib["oem"]),
        ("ROOT", ROOT_X86_64_TYPE, sizes_mib["root"]),
    ]
    parts = []
    offset = ALIGN
    for number, (label, type_guid, mib) in enumerate(order, start=1):
        size = -(-mib * MIB // ALIGN) * ALIGN
        part_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"keel:{seed}:partition:{label}")).upper()
        parts.append(Partition(number, label, type_guid, part_uuid, offset, size))
        offset += size
    total = offset + ALIGN  # room for the backup GPT, keeping the end aligned
    disk_guid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"keel:{seed}:disk")).upper()
    return parts, total, disk_guid


def sfdisk_script(parts: list[Partition], disk_guid: str) -> str:
    """The sfdisk(8) input that writes this table."""
    lines = ["label: gpt", f"label-id: {disk_guid}", "unit: sectors", "sector-size: 512", ""]
    for p in parts:
        lines.append(
            f"start={p.start // SECTOR}, size={p.size // SECTOR}, type={p.type_guid}, "
            f'uuid={p.uuid}, name="{p.label}"'
        )
    return "\n".join(lines) + "\n"


def write_table(
    disk: Path, parts: list[Partition], total: int, disk_guid: str, *, stage: str
) -> None:
    """Create ``disk`` (sparse, ``total`` bytes) and write the GPT with sfdisk."""
    tools.require("sfdisk", stage=stage)
    with disk.open("wb") as f:
        f.truncate(total)
    tools.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe=never", disk],
        input=sfdisk_script(parts, disk_guid).encode(),
        stage=stage,
    )


def copy_in(disk: Path, part: Partition, content: Path) -> None:
    """Copy ``content`` into ``part``, skipping zero blocks so the disk stays sparse."""
    size = content.stat().st_size
    if size > part.size:
        raise ValueError(f"{content.name} ({size} B) is larger than {part.label} ({part.size} B)")
    block = 1 << 20
    zero = bytes(block)
    with content.open("rb") as src, disk.open("r+b") as dst:
        pos = 0
        while chunk := src.read(block):
            if chunk != zero[: len(chunk)]:
                dst.seek(part.start + pos)
                dst.write(chunk)
            pos += len(chunk)


def install_bios_boot(disk: Path, bios_part: Partition, boot_img: bytes, core_img: bytes) -> None:
    """Do what grub-bios-setup does, for a GPT disk with a BIOS boot partition.

    The MBR gets boot.img's code (the protective partition table stays) pointed at the
    first sector of core.img, and core.img's first sector gets the block list of the
    rest of core.img, which lies right after it in the BIOS boot partition.
    """
    if len(core_img) > bios_part.size:
        raise ValueError(f"core.img ({len(core_img)} B) does not fit {bios_part.label}")
    sectors = -(-len(core_img) // SECTOR)
    core = bytearray(core_img + bytes(sectors * SECTOR - len(core_img)))
    # diskboot.img's first block list entry, at the end of core.img's first sector:
    # u64 start sector, u16 sector count, u16 load segment.
    start, count, segment = struct.unpack_from("<QHH", core, SECTOR - 12)
    if count != sectors - 1:
        raise ValueError(f"unexpected core.img block list ({start}, {count}, {segment:#x})")
    struct.pack_into("<QHH", core, SECTOR - 12, bios_part.start_lba + 1, sectors - 1, segment)
    with disk.open("r+b") as f:
        mbr = bytearray(f.read(SECTOR))
        new = bytearray(boot_img)
        new[0x03:0x5A] = mbr[0x03:0x5A]  # BIOS parameter block: keep the disk's
        new[0x1B8:0x200] = mbr[0x1B8:0x200]  # disk signature + protective MBR partition table
        struct.pack_into("<Q", new, 0x5C, bios_part.start_lba)  # where core.img starts
        new[0x64] = 0xFF  # boot drive: use the one the BIOS booted from
        new[0x66:0x68] = b"\x90\x90"  # hard disk: skip the floppy drive check (as grub-bios-setup)
        f.seek(0)
        f.write(new)
        f.seek(bios_part.start)
        f.write(core)


def read_table(disk: Path) -> dict[str, object]:
    """The partition table as sfdisk reports it (for the manifest and tests)."""
    out = tools.run(["sfdisk", "--json", disk], stage="disk")
    table: dict[str, object] = json.loads(out)["partitiontable"]
    return table


def sparse_size(path: Path) -> int:
    """Bytes actually allocated to ``path``."""
    return os.stat(path).st_blocks * 512
