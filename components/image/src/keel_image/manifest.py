"""The image manifest: what is in the disk, for people, the updater and the harness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from keel_image.disk import Partition
from keel_image.filesystems import UsrImage
from keel_image.recipe import Recipe


def packages(tsv: Path) -> list[dict[str, str]]:
    """Installed Debian packages from the rootfs stage's ``packages.tsv``."""
    out = []
    for line in tsv.read_text().splitlines():
        name, version, size = [*line.split("\t"), "", ""][:3]
        out.append({"name": name, "version": version, "installed_kib": size})
    return sorted(out, key=lambda p: p["name"])


def make(
    recipe: Recipe,
    *,
    build_key: str,
    stage_keys: dict[str, str],
    parts: list[Partition],
    disk_guid: str,
    disk_size: int,
    usr: UsrImage,
    kernel_version: str,
    kernel_args: list[str],
    package_list: list[dict[str, str]],
    modules: dict[str, int],
    digests: dict[str, str],
    outputs: dict[str, str],
    python: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The manifest as a JSON-able dict."""
    d = recipe.definition
    return {
        "name": d.name,
        "version": d.version,
        "build_key": build_key,
        "stages": stage_keys,
        "source_date_epoch": d.source_date_epoch,
        "suite": d.suite,
        "kernel": {
            "package": d.kernel,
            "version": kernel_version,
            "args": kernel_args,
            "modules": modules,
        },
        "usr": {
            "filesystem": d.usr_filesystem,
            "compression": d.compression,
            "filesystem_bytes": usr.fs_bytes,
            "verity": {
                "root_hash": usr.root_hash,
                "salt": usr.salt,
                "data_blocks": usr.data_blocks,
                "hash_offset": usr.fs_bytes,
                "hash": "sha256",
                "block_size": 4096,
            },
        },
        "disk": {
            "size": disk_size,
            "guid": disk_guid,
            "partitions": [
                {
                    "number": p.number,
                    "label": p.label,
                    "type": p.type_guid,
                    "uuid": p.uuid,
                    "start": p.start,
                    "size": p.size,
                }
                for p in parts
            ],
        },
        "platforms": [p.name for p in recipe.platforms],
        "contributions": [
            {
                "name": c.name,
                "packages": sorted(c.packages),
                "units": list(c.units),
                "files": sorted(f.path for f in c.files),
                "kernel_args": list(c.kernel_args),
                "kernel_modules": sorted(c.kernel_modules),
                "python_distributions": list(c.python_distributions),
            }
            for c in recipe.contributions
        ],
        "packages": package_list,
        "python": python or [],
        "digests": digests,
        "outputs": outputs,
    }


def write(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as stable, indented JSON."""
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
