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

# On the path to sshd, so ordered after as little as it needs: users (sysusers) and a
# writable /etc, not systemd-tmpfiles-setup (which waits for the journal flush); the script
# makes ~/.ssh itself and tmpfiles sets the home's owner before sshd starts (after sysinit).
FIRSTBOOT_UNIT = """\
[Unit]
Description=Apply first-boot config from QEMU fw_cfg (hostname, SSH keys, addresses)
DefaultDependencies=no
After=systemd-sysusers.service systemd-modules-load.service local-fs.target
Before=ssh.service systemd-networkd.service network-pre.target
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
            kernel_args=["console=ttyS0,115200"],
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
