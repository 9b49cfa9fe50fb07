"""Configuration schemas shared across Keel.

The schemas are pydantic models; :mod:`keel_core.config` loads YAML or JSON into them
and turns validation failures into errors that name the file, line, column and key.
Models forbid unknown keys so that a typo is an error with a suggestion, not a silently
ignored setting. Field descriptions are the reference documentation of each setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Schema(BaseModel):
    """Base of every Keel configuration model: strict keys, frozen values."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PartitionSizes(Schema):
    """Partition sizes in MiB."""

    esp: int = Field(64, ge=16, description="EFI system partition (FAT32)")
    bios_boot: int = Field(2, ge=1, description="BIOS boot partition for GRUB's core image")
    usr: int = Field(512, ge=64, description="each of USR-A and USR-B")
    oem: int = Field(16, ge=1, description="OEM partition (platform files)")
    root: int = Field(256, ge=64, description="ROOT; grows to fill the disk on first boot")


class ImageDefinition(Schema):
    """What to build: ``images/<name>.yaml``."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="image name")
    version: str = Field(pattern=r"^[0-9A-Za-z.+~-]+$", description="image version")
    suite: str = Field("bookworm", description="Debian suite the packages come from")
    mirror: str = Field(
        "http://deb.debian.org/debian", description="Debian mirror (apt's sources apply)"
    )
    sources: list[str] = Field(
        default_factory=list,
        description="further apt source lines (e.g. the security archive) beside the mirror",
    )
    kernel: str = Field(
        "linux-image-cloud-amd64", description="Debian kernel package; its modules are pruned"
    )
    packages: list[str] = Field(default_factory=list, description="extra Debian packages")
    components: list[str] = Field(
        default_factory=list, description="Keel components (plugin names) to include"
    )
    platforms: list[str] = Field(default_factory=lambda: ["qemu"], description="platforms")
    kernel_args: list[str] = Field(default_factory=list, description="extra kernel arguments")
    usr_filesystem: Literal["erofs", "squashfs"] = Field(
        "erofs", description="read-only filesystem of /usr"
    )
    compression: str = Field("lz4", description="compression of the /usr filesystem")
    partitions: PartitionSizes = Field(default_factory=PartitionSizes)  # type: ignore[arg-type]
    source_date_epoch: int = Field(
        1700000000,
        ge=0,
        description="SOURCE_DATE_EPOCH of the build: the timestamp of every file, filesystem"
        " and partition table, so that equal inputs give identical disks",
    )
