"""Errors of the image store. Each one says what went wrong, where, and what to do about it."""

from __future__ import annotations

from keel_core.errors import KeelError


class ImageError(KeelError):
    """Base of every image-store error; the CLI prints it without a traceback."""


class ImageNotFound(ImageError):
    """No image has the given reference or id."""

    def __init__(self, reference: str) -> None:
        self.reference = reference
        super().__init__(
            f"image {reference!r} not found: run 'keel images' to list images, "
            f"'keel pull {reference}' or 'keel load ARCHIVE' to add it"
        )


class AmbiguousImage(ImageError):
    """A short id prefix matches more than one image."""


class DigestMismatch(ImageError):
    """Content did not hash to the digest (or size) it was announced with; nothing was stored."""


class IncompleteTransfer(DigestMismatch):
    """A stream ended (or broke) before all announced bytes arrived; nothing was stored."""


class ArchiveError(ImageError):
    """An archive (docker save, podman save, OCI layout) is malformed or unsupported."""


class UnsafeLayer(ArchiveError):
    """A layer member would write outside the layer root (traversal, absolute path, symlink)."""

    def __init__(self, source: str, member: str, reason: str) -> None:
        self.source = source
        self.member = member
        super().__init__(f"{source}: member {member!r} refused: {reason}")


class ImageInUse(ImageError):
    """An image is pinned by a container and cannot be removed without force."""


class RegistryError(ImageError):
    """A registry refused a request or answered something that is not an image."""


class ReferenceError_(ImageError):
    """An image reference (name[:tag][@digest]) does not parse."""
