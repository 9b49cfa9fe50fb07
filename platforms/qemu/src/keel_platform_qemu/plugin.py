"""The QEMU platform plugin: registered through ``keel_platforms`` like any third party's.

It gives the image a serial console, keeps the virtio drivers and ``qemu_fw_cfg``,
makes a zstd-compressed qcow2 from the raw disk, and adds a first-boot unit that reads
hostname, SSH keys and static addresses from QEMU's fw_cfg (``opt/org.keel/config``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from keel_core import hookimpl
from keel_core.errors import KeelError
from keel_core.types import (
    FileContribution,
    ImageContribution,
    OutputFormat,
    Platform,
    QemuEmulation,
)

if TYPE_CHECKING:
    from keel_core.schemas import ImageDefinition  # pydantic: not for every `keel` command

NAME = "qemu"
FW_CFG_NAME = "opt/org.keel/config"

# tsc=reliable: under TCG the CPU model has no constant/nonstop TSC, so Linux finds the TSCs
# "unsynchronized" and falls back to the HPET, whose every read is an emulated MMIO access
# and which the vDSO cannot use (each clock_gettime becomes a system call). QEMU's TSC is
# the host's, the same for every vCPU. Measured: kernel + initramfs 4.0 s instead of
# 5.3-6.9 s under TCG. Under KVM, kvm-clock still wins (it has the higher rating).
# cryptomgr.notests: the kernel's crypto self-tests (run as algorithms register: sha256,
# hmac, the KDF) took 0.45 s of the kernel's start under TCG (initcall_debug), /init came
# 0.5 s sooner without them; as in Kata Containers' guests. With fips=1 they still run,
# and a wrong sha256 could only make dm-verity refuse the boot.
# no_timer_check: the kernel checks early that the PIT's interrupt reaches it through the
# IO-APIC within a short busy-wait; a TCG vCPU starved by a loaded host (three machines on
# two cores) can miss it, and the kernel panics "IO-APIC + timer doesn't work!" at 0.02 s
# (seen once in CI, 2026-12-05, on one machine of the 3-machine cluster test). Virtual
# machines' timers are emulated and always routed, so the check only fails spuriously:
# Fedora's and RHEL's cloud images boot with it too.
KERNEL_ARGS = ["console=ttyS0,115200", "tsc=reliable", "cryptomgr.notests", "no_timer_check"]

# On the path to sshd and to the network, so ordered after as little as it needs: the
# file systems of /etc and /home (ROOT, mounted read-write by the initramfs), not
# local-fs.target (repart, remount-fs, sysusers, tmpfiles-setup-dev: ~2 s under emulation
# before it could start). The users it writes keys for come from the image (keel-image
# runs systemd-sysusers at build time); the script makes ~/.ssh itself and loads
# qemu_fw_cfg if udev has not yet.
FIRSTBOOT_UNIT = """\
[Unit]
Description=Apply first-boot config from QEMU fw_cfg (hostname, SSH keys, addresses)
DefaultDependencies=no
RequiresMountsFor=/etc /home
Before=ssh.socket ssh.service systemd-networkd.service network-pre.target shutdown.target
Conflicts=shutdown.target
Wants=network-pre.target
ConditionVirtualization=qemu

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/keel/keel-qemu-firstboot

[Install]
WantedBy=sysinit.target
"""


def convert_qcow2(disk_raw: Path, destination: Path) -> None:
    """Write a zstd-compressed qcow2 of ``disk_raw`` (``qemu-img convert -c``)."""
    if shutil.which("qemu-img") is None:
        raise KeelError("qemu platform: qemu-img is missing; apt-get install qemu-utils")
    tmp = destination.with_name(destination.name + ".tmp")
    proc = subprocess.run(
        [
            "qemu-img",
            "convert",
            "-q",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
            str(disk_raw),
            str(tmp),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise KeelError(f"qemu platform: qemu-img convert failed: {proc.stderr.strip()}")
    tmp.rename(destination)


@hookimpl
def keel_platforms() -> Sequence[Platform]:
    """The ``qemu`` platform."""
    return [
        Platform(
            name=NAME,
            description="QEMU/KVM virtual machines (virtio disk and network, fw_cfg config)",
            formats=[OutputFormat("qcow2", "disk.qcow2", convert_qcow2)],
            kernel_args=KERNEL_ARGS,
            kernel_modules=[
                "virtio_pci",
                "virtio_blk",
                "virtio_net",
                "virtio_scsi",
                "virtio_rng",
                "qemu_fw_cfg",
            ],
            emulation=QemuEmulation(firmware="bios", machine="q35", disk_interface="virtio"),
            metadata={"config": f"fw_cfg {FW_CFG_NAME} (JSON)", "console": "ttyS0"},
        )
    ]


@hookimpl
def keel_image_contribution(image: ImageDefinition) -> ImageContribution | None:
    """The fw_cfg first-boot reader, for images that list the qemu platform."""
    if NAME not in image.platforms:
        return None
    script = (resources.files("keel_platform_qemu") / "firstboot.sh").read_bytes()
    return ImageContribution(
        name="platform-qemu",
        files=[
            FileContribution("/usr/lib/keel/keel-qemu-firstboot", script, mode=0o755),
            FileContribution(
                "/usr/lib/systemd/system/keel-qemu-firstboot.service", FIRSTBOOT_UNIT.encode()
            ),
            FileContribution("/usr/lib/modules-load.d/keel-qemu.conf", b"qemu_fw_cfg\n"),
        ],
        units=["keel-qemu-firstboot.service"],
    )
