"""Find the disk to boot: an image directory, a disk file, or a definition to build."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keel_harness.errors import HarnessError

DISK_NAMES = ("disk.qcow2", "disk.raw")
DEFINITION_SUFFIXES = (".yaml", ".yml")


def build(definition: Path, extra_plugins: Sequence[tuple[str, object]] = ()) -> Path:
    """Build ``definition`` with keel-image (cached by content hash); the qcow2 disk's path."""
    try:
        keel_image: Any = importlib.import_module("keel_image")
    except ImportError as exc:
        raise HarnessError(f"cannot build {definition}: keel-image is not installed") from exc
    if not hasattr(keel_image, "build"):
        raise HarnessError(f"cannot build {definition}: this keel-image has no build()")
    kwargs: dict[str, Any] = {"progress": False}
    if extra_plugins:
        kwargs["extra_plugins"] = list(extra_plugins)
    built = keel_image.build(definition, **kwargs)
    disk = Path(built.disk_qcow2 if built.disk_qcow2 else built.disk_raw)
    if not disk.exists():
        raise HarnessError(f"keel-image built {definition} but {disk} does not exist")
    return disk


def resolve(spec: Path, extra_plugins: Sequence[tuple[str, object]] = ()) -> Path:
    """The disk for ``spec``: a disk file, ``<dir>/disk.qcow2|disk.raw``, or a built definition."""
    if not spec.exists():
        raise HarnessError(f"no such image, directory or definition: {spec}")
    if spec.is_dir():
        for name in DISK_NAMES:
            if (spec / name).is_file():
                return spec / name
        raise HarnessError(f"{spec} holds neither {' nor '.join(DISK_NAMES)}")
    if spec.suffix in DEFINITION_SUFFIXES:
        return build(spec, extra_plugins)
    if spec.suffix in (".qcow2", ".raw", ".img"):
        return spec
    raise HarnessError(
        f"{spec}: expected an image directory, a .qcow2/.raw disk or a .yaml definition"
    )
