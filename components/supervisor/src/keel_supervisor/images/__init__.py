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
    IncompleteTransfer,
    RegistryError,
    UnsafeLayer,
)
from keel_supervisor.images.image import Image, RemoveResult
from keel_supervisor.images.store import ImageStore

__all__ = [
    "ArchiveError",
    "DigestMismatch",
    "Image",
    "ImageError",
    "ImageInUse",
    "ImageNotFound",
    "ImageStore",
    "IncompleteTransfer",
    "RegistryError",
    "RemoveResult",
    "UnsafeLayer",
]
