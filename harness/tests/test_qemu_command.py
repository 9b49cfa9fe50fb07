"""The QEMU argv obeys the harness's safety and sizing rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_harness import qemu
from keel_harness.errors import HarnessError


def spec(**kw) -> qemu.QemuSpec:
    base = {
        "name": "m1",
        "accel": "tcg",
        "memory_mib": 512,
        "cpus": 1,
        "disk": Path("/x/disk.qcow2"),
        "console": Path("/x/console.log"),
        "qmp": Path("/x/qmp.sock"),
    }
    base.update(kw)
    return qemu.QemuSpec(**base)


def netdevs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]


def test_user_network_is_restricted_and_forwards_ssh_on_loopback_only():
    argv = qemu.command(spec(nics=[qemu.Nic("user", "52:54:00:00:00:01", ssh_port=2345)]))
    (user,) = netdevs(argv)
    assert user.startswith("user,")
    assert "restrict=on" in user.split(",")
    assert "hostfwd=tcp:127.0.0.1:2345-:22" in user.split(",")


def test_extra_forwards_listen_on_loopback_only_and_stay_restricted():
    nic = qemu.Nic("user", "52:54:00:00:00:01", ssh_port=2345, forwards=((4000, 8080), (4001, 53)))
    (user,) = netdevs(qemu.command(spec(nics=[nic])))
    parts = user.split(",")
    assert "restrict=on" in parts
    assert [p for p in parts if p.startswith("hostfwd=")] == [
        "hostfwd=tcp:127.0.0.1:2345-:22",
        "hostfwd=tcp:127.0.0.1:4000-:8080",
        "hostfwd=tcp:127.0.0.1:4001-:53",
    ]


def test_private_nic_is_a_vde_socket_never_multicast():
    argv = qemu.command(
        spec(
            nics=[
                qemu.Nic("user", "52:54:00:00:00:01", ssh_port=2),
                qemu.Nic("vde", "52:54:00:01:00:01", socket=Path("/run/sw")),
            ]
        )
    )
    _, private = netdevs(argv)
    assert private == "vde,id=net1,sock=/run/sw"
    assert not any("mcast" in a or a.startswith("socket") for a in netdevs(argv))
    assert "virtio-net-pci,netdev=net1,mac=52:54:00:01:00:01" in argv


def test_unknown_nic_kind_and_vde_without_socket_are_errors():
    with pytest.raises(HarnessError, match="unknown NIC kind 'tap'"):
        qemu.command(spec(nics=[qemu.Nic("tap", "52:54:00:00:00:01")]))
    with pytest.raises(HarnessError, match="needs the switch's socket"):
        qemu.command(spec(nics=[qemu.Nic("vde", "52:54:00:00:00:01")]))


def test_console_goes_to_a_file_appended_across_starts():
    argv = qemu.command(spec())
    assert "file,id=console0,path=/x/console.log,append=on" in argv
    assert argv[argv.index("-serial") + 1] == "chardev:console0"


def test_interactive_console_uses_the_terminal_with_ctrl_c():
    argv = qemu.command(spec(console=None))
    assert "stdio,id=console0,signal=on" in argv


def test_accelerator_and_cpu_model():
    tcg = qemu.command(spec())
    assert tcg[tcg.index("-accel") + 1] == "tcg"
    # QEMU's x86-64 baseline model: `max` makes glibc and the kernel choose what TCG
    # emulates slowly (docs/image.md).
    assert tcg[tcg.index("-cpu") + 1] == "qemu64"
    kvm = qemu.command(spec(accel="kvm"))
    assert kvm[kvm.index("-cpu") + 1] == "host"
    with pytest.raises(HarnessError, match="unknown accelerator 'hvf'"):
        qemu.command(spec(accel="hvf"))


def test_uefi_needs_its_own_vars_copy_and_uses_pflash():
    with pytest.raises(HarnessError, match="OVMF_VARS"):
        qemu.command(spec(firmware="uefi"))
    argv = qemu.command(spec(firmware="uefi", ovmf_vars=Path("/x/vars.fd")))
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert any("if=pflash" in d and "readonly=on" in d and "OVMF_CODE" in d for d in drives)
    assert any(d.endswith("file=/x/vars.fd") and "unit=1" in d for d in drives)
    with pytest.raises(HarnessError, match="firmware must be bios or uefi"):
        qemu.command(spec(firmware="coreboot"))


def test_fw_cfg_and_kernel_boot():
    argv = qemu.command(
        spec(
            disk=None,
            kernel=Path("/k"),
            initrd=Path("/i"),
            kernel_args=["a=1", "b"],
            fw_cfg=Path("/x/config.json"),
        )
    )
    assert "name=opt/org.keel/config,file=/x/config.json" in argv
    assert argv[argv.index("-append") + 1] == "a=1 b"
    assert "-drive" not in argv


def test_mac_addresses_are_unique_per_segment_and_index():
    macs = {qemu.mac_address(s, i) for s in range(3) for i in range(300)}
    assert len(macs) == 900
    assert all(m.startswith("52:54:00:") for m in macs)


def test_user_nic_dump_keeps_headers_only():
    nic = qemu.Nic("user", "52:54:00:00:00:01", ssh_port=2, dump=Path("/x/user-net.pcap"))
    argv = qemu.command(spec(nics=[nic]))
    objects = [argv[i + 1] for i, a in enumerate(argv) if a == "-object"]
    assert objects == ["filter-dump,id=dump0,netdev=net0,file=/x/user-net.pcap,maxlen=64"]
