"""The supervisor's image store: load, pull, list, remove and garbage-collect OCI images.

``ImageStore`` is the interface the rest of the supervisor uses (see docs/supervisor.md, Images);
``keel_supervisor.images.commands`` holds the plain functions behind the CLI verbs.
"""

from keel_supervisor.images.errors import (
    ArchiveError,
    DigestMismatch,
    ImageError,
    ImageInUse,
    ImageNotFound,
    RegistryError,
    UnsafeLayer,
)
from keel_supervisor.images.store import Image, ImageStore, RemoveResult

__all__ = [
    "ArchiveError",
    "DigestMismatch",
    "Image",
    "ImageError",
    "ImageInUse",
    "ImageNotFound",
    "ImageStore",
    "RegistryError",
    "RemoveResult",
    "UnsafeLayer",
]
