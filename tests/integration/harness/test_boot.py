"""A Keel machine boots, passes the gate, and answers through every Machine verb."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_harness import CommandFailed, Machine, run_gate

pytestmark = pytest.mark.vm


@pytest.mark.smoke
@pytest.mark.gate
def test_machine_boots_and_passes_the_gate(machine: Machine, keel_host, tmp_path: Path):
    # The `machine` fixture ran the gate already; the verbs below must work on it.
    print(f"boot to SSH: {machine.boot_seconds:.1f} s")
    assert machine.succeed("hostname").strip() == "machine"  # from the fw_cfg config
    machine.wait_for_unit("multi-user.target", timeout=60)
    machine.wait_for_open_port(22, timeout=60)
    machine.fail("test -w /usr/bin")
    with pytest.raises(CommandFailed, match="exited with 3"):
        machine.succeed("exit 3")
    assert keel_host.mount_point("/usr").exists
    assert "ro" in keel_host.mount_point("/usr").options
    assert keel_host.user("core").exists
    (copied,) = machine.copy_from_vm("/etc/machine-id", tmp_path)
    assert copied.read_text().strip() == machine.succeed("cat /etc/machine-id").strip()


@pytest.mark.gate
def test_machine_boots_with_uefi_and_passes_the_gate(machine_factory, keel_image):
    m = machine_factory("uefi", image=keel_image, firmware="uefi")
    m.start()
    m.wait_for_ssh()
    run_gate(m)
    assert m.succeed("test -d /sys/firmware/efi && echo efi").strip() == "efi"
