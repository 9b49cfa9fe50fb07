"""Where a container's root filesystem comes from: the image store, or a plain directory.

The supervisor depends only on these two small protocols, which
``keel_supervisor.images.ImageStore`` and its ``Image`` satisfy; ``RootfsImage`` makes a
directory usable as a one-layer image (``run --rootfs DIR``), for tests and bootstrapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from keel_supervisor.model import HealthCheck, SupervisorError


class ImageLike(Protocol):
    """What the supervisor needs of an image (``keel_supervisor.images.Image``)."""

    @property
    def id(self) -> str:
        """The image id (digest of its config)."""

    @property
    def config(self) -> dict[str, Any]:
        """The image config's ``config`` object."""

    def layer_dirs(self) -> list[Path]:
        """Unpacked layers, lowest first."""


class ImageSource(Protocol):
    """What the supervisor needs of the image store (``keel_supervisor.images.ImageStore``)."""

    def get(self, reference_or_id: str) -> ImageLike:
        """The image, or :class:`KeelError` saying it is unknown."""

    def pin(self, image_id: str, owner: str) -> None:
        """Keep the image while ``owner`` (a container id) uses it."""

    def unpin(self, image_id: str, owner: str) -> None:
        """Release a :meth:`pin`."""


class RootfsImage:
    """A directory used as a one-layer image (``run --rootfs DIR``)."""

    def __init__(self, path: Path) -> None:
        if not path.is_dir():
            raise SupervisorError(f"rootfs {path} is not a directory")
        self.path = path.resolve()
        self.id = f"rootfs:{self.path}"
        self.config: dict[str, Any] = {}

    def layer_dirs(self) -> list[Path]:
        """The directory itself."""
        return [self.path]


def image_health(image_config: dict[str, Any]) -> HealthCheck | None:
    """The image's HEALTHCHECK as a :class:`HealthCheck`, if it has a usable one."""
    raw = image_config.get("Healthcheck") or {}
    test = raw.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    argv = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])
    ns = 1e9  # the image config counts in nanoseconds
    return HealthCheck(
        test=argv,
        interval=raw.get("Interval", 30 * ns) / ns or 30.0,
        timeout=raw.get("Timeout", 30 * ns) / ns or 30.0,
        retries=raw.get("Retries", 3) or 3,
        start_period=raw.get("StartPeriod", 0) / ns,
    )
