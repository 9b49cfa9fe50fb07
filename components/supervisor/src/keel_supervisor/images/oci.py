"""OCI and Docker media types, descriptors and platform selection shared by load and pull."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from typing import Any

from keel_supervisor.images.errors import ArchiveError
from keel_supervisor.images.reference import is_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER + "+gzip",
        OCI_LAYER + "+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


def host_platform() -> tuple[str, str]:
    """``(os, architecture)`` of this machine in OCI spelling (linux, amd64)."""
    machine = platform.machine()
    return "linux", _ARCH.get(machine, machine)


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: media type, digest, size (and annotations, platform)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]
    platform: dict[str, Any]

    @classmethod
    def parse(cls, raw: Any, where: str) -> Descriptor:
        """Validate a descriptor object found at ``where`` (archive path or URL)."""
        if not isinstance(raw, dict):
            raise ArchiveError(f"{where}: descriptor is not an object")
        digest, size = raw.get("digest"), raw.get("size")
        if not isinstance(digest, str) or not is_digest(digest):
            raise ArchiveError(f"{where}: descriptor digest {digest!r} is not sha256:<64 hex>")
        if not isinstance(size, int) or size < 0:
            raise ArchiveError(f"{where}: descriptor {digest} has no valid size")
        return cls(
            media_type=str(raw.get("mediaType", "")),
            digest=digest,
            size=size,
            annotations=dict(raw.get("annotations") or {}),
            platform=dict(raw.get("platform") or {}),
        )

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = self.annotations
        return out


def parse_json(data: bytes, where: str) -> dict[str, Any]:
    """A JSON object from ``data``; ArchiveError naming ``where`` otherwise."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ArchiveError(f"{where}: expected a JSON object")
    return value


def document_kind(doc: dict[str, Any], media_type: str = "") -> str:
    """``"index"`` or ``"manifest"`` for a manifest-ish JSON document."""
    kind = str(doc.get("mediaType") or media_type)
    if kind in INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
        return "index"
    return "manifest"


def pick_platform(index: dict[str, Any], where: str) -> Descriptor:
    """The manifest of an image index that runs here (linux/amd64 on this machine)."""
    want_os, want_arch = host_platform()
    found: list[str] = []
    for raw in index.get("manifests") or []:
        desc = Descriptor.parse(raw, where)
        plat = desc.platform
        found.append(f"{plat.get('os', '?')}/{plat.get('architecture', '?')}")
        if not plat and desc.media_type in MANIFEST_TYPES:
            return desc  # an index without platforms (single-image OCI layouts)
        if plat.get("os") == want_os and plat.get("architecture") == want_arch:
            return desc
    raise ArchiveError(
        f"{where}: no image for {want_os}/{want_arch} (available: {', '.join(found) or 'none'})"
    )


def is_image_manifest(manifest: dict[str, Any]) -> bool:
    """False for artifacts (signatures, SBOMs) stored as manifests with a non-image config."""
    config = manifest.get("config")
    kind = config.get("mediaType", "") if isinstance(config, dict) else ""
    return kind in ("", OCI_CONFIG, DOCKER_CONFIG) and not manifest.get("artifactType")


def manifest_parts(manifest: dict[str, Any], where: str) -> tuple[Descriptor, list[Descriptor]]:
    """The config descriptor and layer descriptors of an image manifest, validated."""
    if manifest.get("schemaVersion") != 2:
        raise ArchiveError(
            f"{where}: unsupported manifest schemaVersion {manifest.get('schemaVersion')!r} "
            "(only schema 2 / OCI manifests are supported)"
        )
    config = Descriptor.parse(manifest.get("config"), f"{where} config")
    layers = [
        Descriptor.parse(raw, f"{where} layers[{i}]")
        for i, raw in enumerate(manifest.get("layers") or [])
    ]
    for i, layer in enumerate(layers):
        if layer.media_type and layer.media_type not in LAYER_TYPES:
            raise ArchiveError(
                f"{where} layers[{i}]: unsupported layer media type {layer.media_type!r}"
            )
    return config, layers


def diff_ids(config: dict[str, Any], where: str) -> list[str]:
    """``rootfs.diff_ids`` of an image config, validated."""
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and is_digest(i) for i in ids):
        raise ArchiveError(f"{where}: image config has no valid rootfs.diff_ids")
    return list(ids)
