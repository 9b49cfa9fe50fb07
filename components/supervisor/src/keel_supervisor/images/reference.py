"""Image references, normalized as docker does: ``busybox`` is ``docker.io/library/busybox:latest``.

A reference names a repository on a registry plus a tag or a manifest digest. Normalizing on the way
in means the store keeps one spelling per image and ``get("busybox")`` finds what
``pull("docker.io/library/busybox:latest")`` stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from keel_supervisor.images.errors import ReferenceError_

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
#: Where docker.io really serves the v2 API.
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[a-zA-Z0-9.-]+|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def endpoint(self) -> str:
        """Host (and port) that serves this registry's v2 API."""
        return DOCKER_HUB_ENDPOINT if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def object(self) -> str:
        """What to ask the manifests endpoint for: the digest if given, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_digest(text: str) -> bool:
    """True for a full ``sha256:<64 hex>`` digest."""
    return bool(_DIGEST.match(text))


def parse_reference(text: str) -> Reference:
    """Parse and normalize ``text``; a reference without tag or digest gets ``:latest``.

    Raises ReferenceError_ naming the part that is wrong.
    """
    original = text
    if not text or text != text.strip():
        raise ReferenceError_(
            f"invalid image reference {original!r}: empty or surrounded by spaces"
        )
    digest: str | None = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise ReferenceError_(
                f"invalid image reference {original!r}: digest must be sha256:<64 hex digits>"
            )
    tag: str | None = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ReferenceError_(f"invalid image reference {original!r}: bad tag {tag!r}")
    parts = text.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.match(first):
            raise ReferenceError_(f"invalid image reference {original!r}: bad registry {first!r}")
        registry, path = first, parts[1:]
    else:
        registry, path = DEFAULT_REGISTRY, parts
    if registry == DEFAULT_REGISTRY and len(path) == 1:
        path = ["library", *path]
    for component in path:
        if not _COMPONENT.match(component):
            raise ReferenceError_(
                f"invalid image reference {original!r}: repository part {component!r} must be "
                "lowercase letters, digits and separators (. _ __ -)"
            )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository="/".join(path), tag=tag, digest=digest)


def normalize(text: str) -> str:
    """The canonical spelling of ``text`` (see parse_reference)."""
    return str(parse_reference(text))


def familiar(reference: str) -> str:
    """The short spelling: ``docker.io/library/busybox:latest`` -> ``busybox:latest``."""
    for prefix in (f"{DEFAULT_REGISTRY}/library/", f"{DEFAULT_REGISTRY}/"):
        if reference.startswith(prefix):
            return reference[len(prefix) :]
    return reference
