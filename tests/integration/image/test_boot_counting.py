"""Slot B gets one try: never marked good, the next boot returns to A; marked good, it stays.

The updater will fill USR-B; here the test copies slot A into B from inside the machine
(partition, kernel, initramfs and a slot-B.cfg), then drives ``keel slot``.
"""

from __future__ import annotations

import pytest

from keel_harness import Machine

pytestmark = [pytest.mark.vm, pytest.mark.slow]

INSTALL_B = """
set -e
dd if=/dev/disk/by-partlabel/USR-A of=/dev/disk/by-partlabel/USR-B bs=4M conv=fsync status=none
mkdir -p /boot/keel/B
cp /boot/keel/A/vmlinuz /boot/keel/A/initrd.img /boot/keel/B/
sed -e 's/keel.slot=A/keel.slot=B/' -e 's|/keel/A/|/keel/B/|g' /boot/keel/slot-A.cfg \
    > /boot/keel/slot-B.cfg
sync
"""


def _slot(m: Machine) -> str:
    return m.succeed("keel slot current").strip()


def test_unconfirmed_slot_falls_back_and_confirmed_slot_stays(machine: Machine):
    m = machine
    assert _slot(m) == "A"
    m.succeed(INSTALL_B, timeout=600)
    assert "slot B: installed" in m.succeed("keel slot status")

    m.succeed("keel slot set-next B")
    m.reboot()
    assert _slot(m) == "B"
    assert m.succeed("cat /sys/block/dm-0/dm/uuid").strip() == "KEEL-VERITY-USR-B"
    assert "next: A" in m.succeed("keel slot status")  # the one try is spent

    m.reboot()  # B was never marked good
    assert _slot(m) == "A"

    m.succeed("keel slot set-next B")
    m.reboot()
    assert _slot(m) == "B"
    m.succeed("keel slot mark-good")
    m.reboot()
    assert _slot(m) == "B"
    assert "good: B" in m.succeed("keel slot status")
