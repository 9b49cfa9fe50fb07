"""The hooks of the example platform. Copy this file to start your own plugin.

Each function decorated with ``@hookimpl`` implements the hook of the same name in
:mod:`keel_core.hookspecs`; Keel calls it with the arguments named there.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Sequence
from pathlib import Path

import click

from keel_core import hookimpl
from keel_core.schemas import ImageDefinition
from keel_core.types import (
    FileContribution,
    HealthCheck,
    ImageContribution,
    OutputFormat,
    Platform,
    QemuEmulation,
)

NAME = "example"


def write_raw_gz(disk_raw: Path, destination: Path) -> None:
    """Example Cloud imports a gzip-compressed raw disk."""
    tmp = destination.with_suffix(destination.suffix + ".part")
    with disk_raw.open("rb") as src, gzip.GzipFile(tmp, "wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    tmp.replace(destination)  # never leave a half-written artifact under the final name


@hookimpl
def keel_platforms() -> Sequence[Platform]:
    """Describe Example Cloud: its disk format, kernel arguments and how to emulate it."""
    return [
        Platform(
            name=NAME,
            description="Example Cloud (a template for third-party platform plugins)",
            formats=[OutputFormat("raw.gz", "disk.raw.gz", write_raw_gz)],
            kernel_args=["console=ttyS0,115200n8"],
            kernel_modules=["virtio_blk", "virtio_net"],
            emulation=QemuEmulation(firmware="uefi", config_channel="metadata"),
            metadata={"config": "http://169.254.169.254/example/v1/user-data"},
        )
    ]


@hookimpl
def keel_image_contribution(image: ImageDefinition) -> ImageContribution | None:
    """Add Example Cloud's guest agent unit, only to images built for this platform."""
    if NAME not in image.platforms:
        return None
    unit = b"[Unit]\nDescription=Example Cloud agent\n[Service]\nExecStart=/bin/true\n"
    return ImageContribution(
        name=NAME,
        files=[FileContribution("/usr/lib/systemd/system/example-agent.service", content=unit)],
        units=["example-agent.service"],
    )


@hookimpl
def keel_health_checks() -> Sequence[HealthCheck]:
    """A check the harness runs on every machine, next to Keel's own."""
    return [HealthCheck("example-kernel", "uname -r", "the kernel answers (example check)")]


@hookimpl
def keel_cli(cli: click.Group) -> None:
    """Add ``keel example-info``."""

    @cli.command("example-info")
    def example_info() -> None:
        """Show what the example platform plugin provides."""
        click.echo(f"{NAME}: formats raw.gz; config from the metadata service")
