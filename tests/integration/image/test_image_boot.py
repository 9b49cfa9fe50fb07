"""The default image boots through real firmware with /usr read-only from USR-A, verified.

Uses the harness's ``machine`` / ``machine_factory`` fixtures (QEMU under TCG, SSH).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from keel_harness import Machine

pytestmark = pytest.mark.vm


def _manifest(disk: Path) -> dict:
    return json.loads((disk.parent / "manifest.json").read_text())


def _check_usr_from_slot_a(m: Machine, disk: Path) -> None:
    fstype = _manifest(disk)["usr"]["filesystem"]
    assert m.succeed("findmnt -n -o SOURCE,FSTYPE /usr").split() == ["/dev/dm-0", fstype]
    options = m.succeed("findmnt -n -o OPTIONS /usr").strip().split(",")
    assert "ro" in options
    assert m.succeed("cat /sys/block/dm-0/dm/uuid").strip() == "KEEL-VERITY-USR-A"
    # the verity target reads USR-A (vda3) and checks it against the manifest's root hash
    table = m.succeed("dmsetup table usr").split()
    assert table[2] == "verity"
    usr_a = m.succeed("readlink -f /dev/disk/by-partlabel/USR-A").strip()
    assert m.succeed(f"lsblk -dno MAJ:MIN {usr_a}").strip() == table[4]
    assert _manifest(disk)["usr"]["verity"]["root_hash"] in table
    status, _, err = m.run("touch /usr/keel-write-test")
    assert status != 0
    assert "Read-only file system" in err
    status, _, err = m.run("dd if=/dev/zero of=/dev/dm-0 bs=4096 count=1 conv=notrunc")
    assert status != 0
    assert "Operation not permitted" in err
    assert m.succeed("keel slot current").strip() == "A"


@pytest.mark.smoke
def test_bios_boot_mounts_usr_read_only_from_usr_a(machine: Machine, keel_image: Path):
    _check_usr_from_slot_a(machine, keel_image)
    machine.wait_for_console_text(r"KEEL-BOOT-OK A", timeout=120)
    # first-boot state made on the machine, not baked into the image
    assert machine.succeed("test -s /etc/ssh/ssh_host_ed25519_key && echo yes").strip() == "yes"
    assert (
        machine.succeed(
            "test -e /usr/share/factory/etc/ssh/ssh_host_ed25519_key || echo no"
        ).strip()
        == "no"
    )
    assert machine.succeed("cat /etc/os-release | grep ^ID=").strip() == "ID=keel"
    # machine-id: empty in the image, so systemd writes a new one into /etc at boot without
    # taking it for a "first boot" (whose preset-all would have enabled every unit, such as
    # systemd-sysext and Debian's ssh.service next to Keel's ssh.socket)
    assert machine.succeed("stat -c %s /usr/share/factory/etc/machine-id").strip() == "0"
    assert machine.succeed("findmnt -n /etc/machine-id || echo not-a-mount").strip() == (
        "not-a-mount"
    )
    assert machine.execute("systemctl is-enabled systemd-sysext.service")[1].strip() == "disabled"
    assert machine.execute("systemctl is-enabled ssh.service")[1].strip() == "disabled"
    # sshd runs per connection from ssh.socket (this test's own SSH session is one)
    assert machine.succeed("systemctl is-active ssh.socket").strip() == "active"
    assert "ssh@" in machine.succeed("systemctl list-units --no-legend 'ssh@*'")


@pytest.mark.smoke  # CI boots both firmwares
def test_uefi_boot_mounts_usr_read_only_from_usr_a(machine_factory, keel_image: Path):
    m = machine_factory("uefi", image=keel_image, firmware="uefi")
    m.start()
    m.wait_for_ssh()
    assert m.succeed("test -d /sys/firmware/efi && echo efi").strip() == "efi"
    _check_usr_from_slot_a(m, keel_image)


def _flip_usr_a_byte(disk: Path, target: Path, offset_in_usr: int) -> None:
    """Copy the raw disk and flip one byte of USR-A's filesystem."""
    manifest = _manifest(disk)
    usr_a = next(p for p in manifest["disk"]["partitions"] if p["label"] == "USR-A")
    shutil.copyfile(disk.parent / "disk.raw", target)
    with target.open("r+b") as f:
        f.seek(usr_a["start"] + offset_in_usr)
        byte = f.read(1)
        f.seek(usr_a["start"] + offset_in_usr)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.smoke
def test_flipped_byte_in_usr_a_refuses_to_boot(machine_factory, keel_image: Path, tmp_path: Path):
    broken = tmp_path / "broken.raw"
    _flip_usr_a_byte(keel_image, broken, 1024 + 8)  # inside the erofs superblock block
    m = machine_factory("corrupt", image=broken)
    m.start()
    m.wait_for_console_text(
        r"KEEL-BOOT-REFUSED: /usr on \S+ \(slot A\) does not match", timeout=600
    )
    assert m.wait_for_shutdown(timeout=120) == 0
    assert m.console.search(re.compile("KEEL-BOOT-OK")) is None


def test_root_grows_to_fill_a_bigger_disk(machine_factory, keel_image: Path, tmp_path: Path):
    bigger = tmp_path / "bigger.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(keel_image), "-F", "qcow2",
         str(bigger), "4G"],
        check=True,
    )  # fmt: skip
    m = machine_factory("grow", image=bigger)
    m.start()
    m.wait_for_ssh()
    m.wait_for_unit("systemd-repart.service", timeout=300)
    m.wait_for_unit("keel-growfs-root.service", timeout=300)  # grows / after repart, online
    size = int(m.succeed("findmnt -n -b -o SIZE /").strip())
    assert size > 2_500_000_000  # 256 MiB as built; the 4 GiB disk minus the other partitions
    assert m.succeed("blockdev --getsize64 /dev/disk/by-partlabel/ROOT").strip() != str(256 << 20)


def test_etc_without_its_factory_marker_is_copied_again_from_usr(machine: Machine):
    """The built ROOT has /etc already; a ROOT without the marker gets /etc from /usr at boot."""
    m = machine
    assert m.succeed("test -e /etc/.keel-factory && echo built-in").strip() == "built-in"
    m.succeed("rm /etc/.keel-factory /etc/debian_version && sync")
    m.reboot()
    assert m.succeed("test -e /etc/.keel-factory && echo copied").strip() == "copied"
    assert m.succeed("cat /etc/debian_version") == m.succeed(
        "cat /usr/share/factory/etc/debian_version"
    )
    assert "copying /etc from /usr/share/factory/etc" in m.succeed("journalctl -b -k --no-pager")
