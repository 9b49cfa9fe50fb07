"""GPT layout (real sfdisk) and the BIOS boot code patch (as grub-bios-setup does it)."""

from __future__ import annotations

import itertools
import json
import struct
import subprocess
from pathlib import Path

import pytest

from keel_image import disk

SIZES = {"esp": 16, "bios_boot": 1, "usr": 64, "oem": 1, "root": 64}


def test_layout_is_aligned_ordered_and_derived_from_the_seed():
    parts, total, guid = disk.layout(SIZES, "seed")
    assert [p.label for p in parts] == ["EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B", "OEM", "ROOT"]
    assert all(p.start % disk.ALIGN == 0 and p.size % disk.ALIGN == 0 for p in parts)
    assert all(a.start + a.size == b.start for a, b in itertools.pairwise(parts))
    assert parts[1].size == disk.ALIGN  # 1 MiB rounded up to the 2 MiB alignment
    assert total == parts[-1].start + parts[-1].size + disk.ALIGN
    assert disk.layout(SIZES, "seed") == (parts, total, guid)
    assert disk.layout(SIZES, "other")[2] != guid
    assert len({p.uuid for p in parts}) == len(parts)


def test_sfdisk_writes_the_table_we_asked_for(tmp_path: Path):
    parts, total, guid = disk.layout(SIZES, "seed")
    raw = tmp_path / "disk.raw"
    disk.write_table(raw, parts, total, guid, stage="disk")
    table = json.loads(
        subprocess.run(["sfdisk", "--json", raw], capture_output=True, check=True).stdout
    )["partitiontable"]
    assert table["label"] == "gpt"
    assert table["id"] == guid
    got = [(p["name"], p["type"], p["uuid"], p["start"], p["size"]) for p in table["partitions"]]
    want = [(p.label, p.type_guid, p.uuid, p.start // 512, p.size // 512) for p in parts]
    assert got == want
    assert raw.stat().st_blocks * 512 < 1 << 20  # sparse


def test_copy_in_writes_at_the_partition_and_refuses_oversized_content(tmp_path: Path):
    parts, total, guid = disk.layout(SIZES, "seed")
    raw = tmp_path / "disk.raw"
    disk.write_table(raw, parts, total, guid, stage="disk")
    content = tmp_path / "usr.img"
    content.write_bytes(b"\0" * (1 << 20) + b"KEEL" + b"\0" * 100)
    usr = parts[2]
    disk.copy_in(raw, usr, content)
    with raw.open("rb") as f:
        f.seek(usr.start + (1 << 20))
        assert f.read(4) == b"KEEL"
    too_big = tmp_path / "big.img"
    with too_big.open("wb") as f:
        f.truncate(parts[4].size + 1)
    with pytest.raises(ValueError, match="larger than OEM"):
        disk.copy_in(raw, parts[4], too_big)


def test_bios_boot_points_mbr_at_core_image_and_keeps_the_partition_table(tmp_path: Path):
    parts, total, guid = disk.layout(SIZES, "seed")
    raw = tmp_path / "disk.raw"
    disk.write_table(raw, parts, total, guid, stage="disk")
    before = raw.read_bytes()[:512]
    boot_img = bytes(range(256)) * 2
    # A 3-sector core image whose block list says "2 more sectors" (what grub-mkimage writes).
    core = bytearray(3 * 512 - 100)
    struct.pack_into("<QHH", core, 512 - 12, 2, 2, 0x820)
    bios = parts[1]
    disk.install_bios_boot(raw, bios, boot_img, bytes(core))
    data = raw.read_bytes()
    mbr = data[:512]
    assert mbr[0x1B8:] == before[0x1B8:]  # protective MBR partition table and signature
    assert mbr[0x5A:0x5C] == boot_img[0x5A:0x5C]
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == bios.start_lba
    assert mbr[0x66:0x68] == b"\x90\x90"
    first = data[bios.start : bios.start + 512]
    assert struct.unpack_from("<QHH", first, 500) == (bios.start_lba + 1, 2, 0x820)
    # GPT is still valid after the MBR code was written
    subprocess.run(["sfdisk", "--verify", raw], check=True, capture_output=True)


def test_bios_boot_rejects_an_unexpected_core_image(tmp_path: Path):
    parts, total, guid = disk.layout(SIZES, "seed")
    raw = tmp_path / "disk.raw"
    disk.write_table(raw, parts, total, guid, stage="disk")
    with pytest.raises(ValueError, match=r"unexpected core\.img block list"):
        disk.install_bios_boot(raw, parts[1], bytes(512), bytes(3 * 512))
