"""The built disk, checked with the real tools: sfdisk, fsck, veritysetup, mtools.

Marked ``host``: it runs mmdebstrap and mkfs as root (the stage cache makes reruns fast).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from keel_core.errors import ConfigError
from keel_image import build
from keel_image.cache import StageCache
from keel_image.errors import BuildError

from .conftest import DEFINITION

pytestmark = [pytest.mark.host, pytest.mark.slow]

DPS_USR = "8484680C-9521-48C6-9C11-B0720656F69E"
DPS_ROOT = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS = "21686148-6449-6E6F-744E-656564454649"


def run(*argv: str | Path) -> str:
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PATH": os.environ["PATH"] + ":/usr/sbin:/sbin"},
    ).stdout


def extract(disk: Path, part: dict, dest: Path, size: int | None = None) -> Path:
    with disk.open("rb") as src, dest.open("wb") as out:
        src.seek(part["start"])
        remaining = size if size is not None else part["size"]
        while remaining > 0:
            chunk = src.read(min(remaining, 1 << 20))
            out.write(chunk)
            remaining -= len(chunk)
    return dest


def parts_by_label(built) -> dict[str, dict]:
    return {p["label"]: p for p in built.manifest["disk"]["partitions"]}


def test_partition_table(built):
    table = json.loads(run("sfdisk", "--json", built.disk_raw))["partitiontable"]
    assert table["label"] == "gpt"
    got = [(p["name"], p["type"]) for p in table["partitions"]]
    assert got == [
        ("EFI-SYSTEM", ESP),
        ("BIOS-BOOT", BIOS),
        ("USR-A", DPS_USR),
        ("USR-B", DPS_USR),
        ("OEM", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        ("ROOT", DPS_ROOT),
    ]
    for p in table["partitions"]:
        assert p["start"] % 4096 == 0, p  # 2 MiB in 512-byte sectors
        assert p["size"] % 4096 == 0, p
    run("sfdisk", "--verify", built.disk_raw)
    assert built.disk_raw.read_bytes()[510:512] == b"\x55\xaa"
    assert built.disk_qcow2.stat().st_size < built.disk_raw.stat().st_size
    info = json.loads(run("qemu-img", "info", "--output=json", built.disk_qcow2))
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == built.disk_raw.stat().st_size


def test_filesystems_pass_fsck(built, tmp_path: Path):
    parts = parts_by_label(built)
    root = extract(built.disk_raw, parts["ROOT"], tmp_path / "root.img")
    run("e2fsck", "-f", "-n", root)
    assert "ROOT" in run("blkid", "-o", "value", "-s", "LABEL", root)
    esp = extract(built.disk_raw, parts["EFI-SYSTEM"], tmp_path / "esp.img")
    run("fsck.vfat", "-n", esp)
    usr_fs = extract(
        built.disk_raw,
        parts["USR-A"],
        tmp_path / "usr.img",
        built.manifest["usr"]["filesystem_bytes"],
    )
    fstype = built.manifest["usr"]["filesystem"]
    assert run("blkid", "-o", "value", "-s", "TYPE", usr_fs).strip() == fstype
    if fstype == "erofs":
        run("fsck.erofs", usr_fs)
    else:  # unsquashfs reads every metadata block and every file's data to extract
        run("unsquashfs", "-no-progress", "-quiet", "-d", tmp_path / "usr", usr_fs)
        assert (tmp_path / "usr/lib/systemd/systemd").is_file()
        assert (tmp_path / "usr/share/factory/etc/fstab").is_file()
        assert not list((tmp_path / "usr/share/factory/etc/ssh").glob("ssh_host_*"))
        # empty, not missing: no ID baked in, and no systemd "first boot" (preset-all)
        assert (tmp_path / "usr/share/factory/etc/machine-id").read_bytes() == b""


def test_verity_tree_matches_the_root_hash_on_the_kernel_line(built, tmp_path: Path):
    parts = parts_by_label(built)
    verity = built.manifest["usr"]["verity"]
    usr = extract(built.disk_raw, parts["USR-A"], tmp_path / "usr-a.img")
    args = [
        "veritysetup",
        "verify",
        "--no-superblock",
        f"--hash-offset={verity['hash_offset']}",
        f"--data-blocks={verity['data_blocks']}",
        f"--salt={verity['salt']}",
        "--hash=sha256",
        "--data-block-size=4096",
        "--hash-block-size=4096",
    ]
    run(*args, usr, usr, verity["root_hash"])
    esp = extract(built.disk_raw, parts["EFI-SYSTEM"], tmp_path / "esp.img")
    slot_a = run("mtype", "-i", esp, "::/keel/slot-A.cfg")
    assert f"keel.usrhash={verity['root_hash']}" in slot_a
    assert "keel.slot=A" in slot_a
    with usr.open("r+b") as f:  # one flipped byte deep in the data: verify must fail
        f.seek(verity["hash_offset"] // 2)
        b = f.read(1)
        f.seek(verity["hash_offset"] // 2)
        f.write(bytes([b[0] ^ 0x80]))
    proc = subprocess.run(
        [*args, str(usr), str(usr), verity["root_hash"]], capture_output=True, check=False
    )
    assert proc.returncode != 0


def test_no_machine_identity_in_the_image(built, tmp_path: Path):
    parts = parts_by_label(built)
    root = extract(built.disk_raw, parts["ROOT"], tmp_path / "root.img")

    def names(path: str) -> set[str]:
        listing = run("debugfs", "-R", f"ls -p {path}", root)
        return {line.split("/")[5] for line in listing.splitlines() if line.count("/") >= 6}

    # /etc on ROOT is /usr/share/factory/etc as the initramfs would copy it, marker included,
    # and no machine's identity: an empty machine-id, no SSH host key (made on first boot)
    etc = names("/etc")
    assert {".keel-factory", "passwd", "fstab", "machine-id", "ssh"} <= etc
    assert not {n for n in names("/etc/ssh") if n.startswith("ssh_host_")}
    stat = run("debugfs", "-R", "stat /etc/machine-id", root)
    assert re.search(r"\bSize: 0\b", stat), stat
    pkgs = {p["name"] for p in built.manifest["packages"]}
    assert {"systemd", "openssh-server", "linux-image-cloud-amd64"} <= pkgs
    assert "apt" not in pkgs
    assert "perl" not in pkgs
    assert built.manifest["kernel"]["modules"]["kept"] < 100


def test_second_build_is_byte_identical(built, tmp_path: Path):
    """Stages after rootfs rebuilt from scratch twice (same package files) give equal disks."""
    shared = StageCache()
    rootfs_key = built.manifest["stages"]["rootfs"]
    digests = []
    for i in (1, 2):
        cache = StageCache(tmp_path / f"cache{i}")
        (cache.root / "stages" / "rootfs").mkdir(parents=True)
        os.symlink(shared.path("rootfs", rootfs_key), cache.path("rootfs", rootfs_key))
        image = build(DEFINITION, out_dir=tmp_path / f"out{i}", progress=False, cache=cache)
        digests.append(
            {
                name: hashlib.sha256((image.directory / name).read_bytes()).hexdigest()
                for name in ("disk.raw", "disk.qcow2")
            }
        )
    assert digests[0] == digests[1]


def test_usr_too_big_for_its_partition_is_a_clear_error(tmp_path: Path):
    small = tmp_path / "small.yaml"
    text = DEFINITION.read_text().replace("usr: 512", "usr: 64")
    text = text.replace("usr_filesystem: squashfs", "usr_filesystem: erofs")
    small.write_text(text.replace("compression: zstd-3", "compression: none"))
    with pytest.raises(BuildError) as err:
        build(small, out_dir=tmp_path / "out", progress=False)
    message = str(err.value)
    assert "USR-A has 64 MiB" in message
    assert "set partitions.usr to at least" in message
    assert not (tmp_path / "out" / "keel-0.1.0").exists()


def test_unknown_package_points_at_its_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        DEFINITION.read_text().replace("packages: []", "packages:\n  - keel-no-such-pkg")
    )
    with pytest.raises(ConfigError) as err:
        build(bad, out_dir=tmp_path / "out", progress=False)
    line = bad.read_text().splitlines().index("  - keel-no-such-pkg") + 1
    assert f"{bad}:{line}:5: packages[0]: unknown Debian package 'keel-no-such-pkg'" in str(
        err.value
    )
    assert not (tmp_path / "out").exists()
