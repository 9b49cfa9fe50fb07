"""What the store hands out: an image (id, names, config, layers) and the result of a removal."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel_supervisor.images.blobs import digest_hex
from keel_supervisor.images.errors import ImageError


def short_link(diff_id: str) -> str:
    """The name of a layer's short link under ``<root>/l``."""
    return digest_hex(diff_id)[:16]


@dataclass(frozen=True)
class Image:
    """An image in the store.

    ``id`` is the digest of its config (the same however it arrived), ``references`` its
    normalized names, ``config`` the image config's ``config`` object (Entrypoint, Cmd, Env,
    WorkingDir, User, ExposedPorts, Labels, StopSignal, Healthcheck), ``size`` the bytes of its
    unpacked files.
    """

    id: str
    references: tuple[str, ...]
    config: dict[str, Any]
    size: int
    manifest_digest: str
    diff_ids: tuple[str, ...]
    created: str
    os: str
    architecture: str
    layers_root: Path = field(repr=False)

    def layer_dirs(self) -> list[Path]:
        """Unpacked layer trees, LOWEST FIRST (overlayfs wants ``lowerdir=`` highest first).

        The paths are short links (``<root>/l/<16 hex>``) to ``layers/sha256/<diff_id>/root``,
        so that the ``lowerdir=`` option of an image with many layers fits the kernel's one-page
        limit on mount options (about 100 layers instead of 38). Treat them as read only: other
        images share them.
        """
        links = self.layers_root.parent.parent / "l"
        dirs = [links / short_link(d) for d in self.diff_ids]
        for d, path in zip(self.diff_ids, dirs, strict=True):
            if not path.is_dir():
                raise ImageError(
                    f"image {self.id}: layer {d} is missing from the store; "
                    "remove the image ('keel rmi --force') and pull or load it again"
                )
        return dirs


@dataclass
class RemoveResult:
    """What ``remove`` did: names taken off, image ids deleted."""

    untagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
