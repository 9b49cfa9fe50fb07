"""Read image archives: docker-archive (``docker save``, ``podman save``) and OCI layouts.

This module only finds out *what* an archive holds (which images, their names, manifests, configs
and layer members); :mod:`keel_supervisor.images.store` copies the content in, verifying every
digest. Formats:

* OCI image layout, directory or tar (``podman save --format oci-archive``, ``skopeo copy
  oci:``, ``docker save`` since Docker 25, which also writes a legacy ``manifest.json``):
  ``index.json`` -> (nested index -> the linux/amd64 entry) -> manifest -> config and layers.
* docker-archive (``docker save`` before 25, ``podman save``, ``skopeo copy docker-archive:``):
  ``manifest.json`` lists ``Config``, ``RepoTags`` and ``Layers`` (uncompressed tars, checked
  against the config's ``rootfs.diff_ids``).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from keel_supervisor.images import oci
from keel_supervisor.images.blobs import digest_bytes, digest_hex
from keel_supervisor.images.errors import ArchiveError, ImageError
from keel_supervisor.images.reference import normalize

_BARE_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


class Source:
    """Files of an archive, by their path inside it (a directory or a tar file)."""

    label: str

    def has(self, name: str) -> bool:
        """True when the archive holds a file called ``name``."""
        raise NotImplementedError

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """Open the member ``name`` for reading."""
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        """The whole member ``name``; ArchiveError naming it if it is missing."""
        if not self.has(name):
            raise ArchiveError(f"{self.label}: missing {name!r}")
        with self.open(name) as f:
            return f.read()

    def close(self) -> None:
        """Release the archive."""


class DirSource(Source):
    """An OCI layout (or unpacked docker save) in a directory."""

    def __init__(self, path: Path) -> None:
        self.root = path.resolve()
        self.label = str(path)

    def _path(self, name: str) -> Path:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            raise ArchiveError(f"{self.label}: refusing path {name!r} outside the archive")
        path = self.root.joinpath(*parts)
        if not path.resolve().is_relative_to(self.root):
            raise ArchiveError(f"{self.label}: {name!r} leads outside the archive directory")
        return path

    def has(self, name: str) -> bool:
        return self._path(name).is_file()

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return self._path(name).open("rb")


class TarSource(Source):
    """An archive in a tar file (optionally gzip/xz/bz2 compressed, as ``docker load`` accepts)."""

    def __init__(self, path: Path, *, label: str = "", remove: bool = False) -> None:
        self.label = label or str(path)
        self.path = path
        self.remove = remove
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            self.members = {
                m.name.removeprefix("./"): m for m in self.tar.getmembers() if not m.isdir()
            }
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveError(f"{path}: cannot read the archive: {exc}") from exc

    def has(self, name: str) -> bool:
        return name.removeprefix("./") in self.members

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        member = self.members.get(name.removeprefix("./"))
        data = self.tar.extractfile(member) if member is not None else None
        if data is None:
            raise ArchiveError(f"{self.label}: {name!r} is missing or not a file")
        with data:
            yield data

    def close(self) -> None:
        self.tar.close()
        if self.remove:
            self.path.unlink(missing_ok=True)


def open_source(path: Path, scratch: Path | None = None) -> Source:
    """A Source for a directory or a tar file; ArchiveError saying what was expected.

    A compressed tar (``docker save | gzip``) is first decompressed into ``scratch`` (a
    directory), so that reading its members in any order does not decompress it again and again.
    """
    if path.is_dir():
        return DirSource(path)
    if not path.exists():
        raise ArchiveError(f"{path}: no such file or directory")
    if not tarfile.is_tarfile(path):
        raise ArchiveError(
            f"{path}: not a tar archive or directory; expected the output of 'docker save', "
            "'podman save' or an OCI image layout"
        )
    if scratch is not None:
        with path.open("rb") as f:
            head = f.read(6)
        if _compressed(head):
            plain = scratch / f"archive-{os.getpid()}-{os.urandom(6).hex()}.tar"
            try:
                with _decompress(path, head) as compressed, plain.open("wb") as out:
                    shutil.copyfileobj(compressed, out, 1 << 20)
                return TarSource(plain, label=str(path), remove=True)
            except BaseException:
                plain.unlink(missing_ok=True)
                raise
    return TarSource(path)


def _compressed(head: bytes) -> bool:
    return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == b"\xfd7zXZ\x00"


def _decompress(path: Path, head: bytes) -> io.BufferedIOBase:
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(path, "rb")
    if head[:3] == b"BZh":
        return bz2.BZ2File(path, "rb")
    return lzma.LZMAFile(path, "rb")


@dataclass
class LayerInput:
    """One layer to copy in: its member path, and its descriptor when the archive gives one."""

    member: str
    descriptor: oci.Descriptor | None


@dataclass
class ImportItem:
    """One image found in an archive."""

    where: str
    config: bytes
    config_digest: str
    layers: list[LayerInput]
    manifest: bytes | None = None
    names: list[str] = field(default_factory=list)


def scan(source: Source) -> list[ImportItem]:
    """Every image in the archive, with the names it carries (normalized references)."""
    if source.has("index.json"):
        items = _scan_oci(source)
        if source.has("manifest.json"):
            _merge_docker_names(source, items)
        return items
    if source.has("manifest.json"):
        return _scan_docker(source)
    raise ArchiveError(
        f"{source.label}: neither index.json (OCI layout) nor manifest.json (docker save) found; "
        "is this an image archive?"
    )


def blob_member(digest: str) -> str:
    """Where an OCI layout keeps the blob ``digest``."""
    return f"blobs/sha256/{digest_hex(digest)}"


def read_blob(source: Source, desc: oci.Descriptor) -> bytes:
    """A small blob (index, manifest, config) read and checked against its descriptor."""
    data = source.read(blob_member(desc.digest))
    if digest_bytes(data) != desc.digest or len(data) != desc.size:
        raise ArchiveError(
            f"{source.label}: blob {desc.digest} does not match its digest or size "
            "(corrupt archive)"
        )
    return data


def _scan_oci(source: Source) -> list[ImportItem]:
    if source.has("oci-layout"):
        layout = oci.parse_json(source.read("oci-layout"), f"{source.label}: oci-layout")
        version = str(layout.get("imageLayoutVersion", ""))
        if not version.startswith("1."):
            raise ArchiveError(
                f"{source.label}: oci-layout imageLayoutVersion {version!r} is not supported"
            )
    where = f"{source.label}: index.json"
    index = oci.parse_json(source.read("index.json"), where)
    by_config: dict[str, ImportItem] = {}
    for i, raw in enumerate(index.get("manifests") or []):
        top = oci.Descriptor.parse(raw, f"{where} manifests[{i}]")
        desc, doc = top, oci.parse_json(read_blob(source, top), f"{source.label}: {top.digest}")
        for _depth in range(4):
            if oci.document_kind(doc, desc.media_type) != "index":
                break
            desc = oci.pick_platform(doc, f"{source.label}: index {desc.digest}")
            doc = oci.parse_json(read_blob(source, desc), f"{source.label}: {desc.digest}")
        else:
            raise ArchiveError(f"{where}: image indexes nested too deeply")
        mwhere = f"{source.label}: manifest {desc.digest}"
        if not oci.is_image_manifest(doc):
            continue  # an artifact (signature, SBOM, attestation) beside the images
        config_desc, layers = oci.manifest_parts(doc, mwhere)
        item = by_config.get(config_desc.digest)
        if item is None:
            item = ImportItem(
                where=mwhere,
                config=read_blob(source, config_desc),
                config_digest=config_desc.digest,
                layers=[LayerInput(blob_member(d.digest), d) for d in layers],
                manifest=read_blob(source, desc),
            )
            by_config[config_desc.digest] = item
        for name in _oci_names(top.annotations, source.label):
            if name not in item.names:
                item.names.append(name)
    if not by_config:
        raise ArchiveError(f"{where}: the index lists no images")
    return list(by_config.values())


def _oci_names(annotations: dict[str, str], label: str) -> list[str]:
    """Names from an index entry: containerd's full name, else ref.name (a bare tag gets a
    ``localhost/<archive name>`` repository, as the layout itself has no repository name)."""
    full = annotations.get(oci.CONTAINERD_NAME)
    ref = annotations.get(oci.REF_NAME)
    try:
        if full:
            return [normalize(full)]
        if not ref:
            return []
        if "/" in ref or ":" in ref or not _BARE_TAG.match(ref):
            return [normalize(ref)]
        return [normalize(f"localhost/{_archive_repository(label)}:{ref}")]
    except ImageError as exc:
        raise ArchiveError(f"{label}: index.json: bad image name: {exc}") from exc


def _archive_repository(label: str) -> str:
    name = Path(label).name.lower()
    for suffix in (".gz", ".tgz", ".xz", ".tar", ".oci"):
        name = name.removesuffix(suffix)
    name = re.sub(r"[^a-z0-9._-]+", "-", name).strip("._-")
    return name or "image"


def _docker_manifest(source: Source) -> list[dict[str, Any]]:
    where = f"{source.label}: manifest.json"
    try:
        entries = json.loads(source.read("manifest.json"))
    except ValueError as exc:
        raise ArchiveError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ArchiveError(f"{where}: expected a list of images (docker save format)")
    return entries


def _scan_docker(source: Source) -> list[ImportItem]:
    items: list[ImportItem] = []
    for i, entry in enumerate(_docker_manifest(source)):
        where = f"{source.label}: manifest.json[{i}]"
        config_name, layers = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layers, list):
            raise ArchiveError(f"{where}: needs 'Config' (a path) and 'Layers' (a list of paths)")
        config = source.read(config_name)
        digest = digest_bytes(config)
        stem = Path(config_name).name.removesuffix(".json")
        if re.fullmatch(r"[0-9a-f]{64}", stem) and stem != digest_hex(digest):
            raise ArchiveError(
                f"{where}: config {config_name!r} hashes to {digest} (corrupt archive)"
            )
        names = []
        for tag in entry.get("RepoTags") or []:
            try:
                names.append(normalize(str(tag)))
            except ImageError as exc:
                raise ArchiveError(f"{where}: RepoTags: {exc}") from exc
        items.append(
            ImportItem(
                where=where,
                config=config,
                config_digest=digest,
                layers=[LayerInput(str(layer), None) for layer in layers],
                names=names,
            )
        )
    return items


def _merge_docker_names(source: Source, items: list[ImportItem]) -> None:
    """Docker 25+ writes both formats; its manifest.json RepoTags name the OCI images."""
    by_config = {item.config_digest: item for item in items}
    for entry in _docker_manifest(source):
        config = str(entry.get("Config", ""))
        hexpart = Path(config).name.removesuffix(".json")
        item = by_config.get(f"sha256:{hexpart}")
        for tag in entry.get("RepoTags") or []:
            name = normalize(str(tag))
            if item is not None and name not in item.names:
                item.names.append(name)
