"""Build small OCI images from Python, for tests (ours, and those of plugins and the runtime).

No registry and no container engine needed: layers are tars written with :mod:`tarfile`, the
image is written as an OCI layout directory or a legacy ``docker save`` archive. ``busybox_layer``
makes a runnable root filesystem from the host's busybox-static.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from keel_supervisor.images import oci
from keel_supervisor.images.blobs import digest_bytes

BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "echo", "cat", "ls", "sleep", "true", "false", "env", "id", "test")


@dataclass
class Entry:
    """One tar member of a test layer."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0
    mtime: int = 1_700_000_000


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> Entry:
    """A regular file."""
    return Entry(name, tarfile.REGTYPE, data, mode, **kw)


def directory(name: str, mode: int = 0o755, **kw: Any) -> Entry:
    """A directory."""
    return Entry(name, tarfile.DIRTYPE, mode=mode, **kw)


def symlink(name: str, target: str) -> Entry:
    """A symbolic link (target kept verbatim)."""
    return Entry(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink(name: str, target: str) -> Entry:
    """A hard link to an earlier member."""
    return Entry(name, tarfile.LNKTYPE, linkname=target)


def whiteout(path: str) -> Entry:
    """An OCI whiteout hiding ``path`` of lower layers (``dir/.wh.name``)."""
    parent, _, base = path.rpartition("/")
    return Entry(f"{parent}/.wh.{base}" if parent else f".wh.{base}", mode=0)


def opaque(dirpath: str) -> Entry:
    """An opaque whiteout: ``dirpath`` hides everything lower layers had in it."""
    return Entry(f"{dirpath}/.wh..wh..opq", mode=0)


def chardev(name: str, major: int, minor: int, mode: int = 0o666) -> Entry:
    """A character device node."""
    return Entry(name, tarfile.CHRTYPE, mode=mode, devmajor=major, devminor=minor)


def layer_tar(entries: list[Entry]) -> bytes:
    """An uncompressed layer tar (PAX format, so xattrs survive) with ``entries`` in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.xattrs:
                info.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                    for k, v in e.xattrs.items()
                }
            if e.kind == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def busybox_layer(extra: list[Entry] | None = None) -> bytes:
    """A root filesystem with busybox-static and a few applets (needs /bin/busybox)."""
    entries = [directory("bin"), directory("etc"), directory("tmp", 0o1777)]
    entries.append(file("bin/busybox", BUSYBOX.read_bytes(), 0o755))
    entries += [symlink(f"bin/{applet}", "busybox") for applet in BUSYBOX_APPLETS]
    entries.append(file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"))
    return layer_tar(entries + list(extra or []))


def compress(layer: bytes, how: str | None) -> tuple[bytes, str]:
    """``(blob, media type)`` of a layer tar: ``how`` is None, "gzip" or "zstd"."""
    if how is None:
        return layer, oci.OCI_LAYER
    if how == "gzip":
        return gzip.compress(layer, mtime=0), oci.OCI_LAYER + "+gzip"
    return zstandard.ZstdCompressor().compress(layer), oci.OCI_LAYER + "+zstd"


@dataclass
class BuiltImage:
    """What a builder wrote: ids and digests to check the store against."""

    config: bytes
    manifest: bytes
    layers: list[bytes]

    @property
    def id(self) -> str:
        """The image id (digest of the config)."""
        return digest_bytes(self.config)

    @property
    def diff_ids(self) -> list[str]:
        """Digests of the uncompressed layers."""
        return [digest_bytes(layer) for layer in self.layers]


def image_config(layers: list[bytes], **config: Any) -> bytes:
    """An OCI image config for ``layers`` with ``config`` as its ``config`` object."""
    doc = {
        "architecture": oci.host_platform()[1],
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": config or {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [digest_bytes(layer) for layer in layers]},
        "history": [{"created_by": "keel testing"} for _ in layers],
    }
    return json.dumps(doc, sort_keys=True).encode()


def write_oci_layout(
    path: Path,
    layers: list[bytes],
    *,
    ref_name: str | None = "latest",
    compression: str | None = "gzip",
    index_wrap: bool = False,
    **config: Any,
) -> BuiltImage:
    """Write an OCI image layout directory; ``index_wrap`` puts the manifest behind a nested
    multi-platform index (with a decoy arm64 entry), as registries and buildx do."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = digest_bytes(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    cfg = image_config(layers, **config)
    layer_descs = []
    for layer in layers:
        blob, media_type = compress(layer, compression)
        layer_descs.append({"mediaType": media_type, "digest": put(blob), "size": len(blob)})
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "digest": put(cfg), "size": len(cfg)},
            "layers": layer_descs,
        }
    ).encode()
    top: dict[str, Any] = {
        "mediaType": oci.OCI_MANIFEST,
        "digest": put(manifest),
        "size": len(manifest),
    }
    if index_wrap:
        decoy = dict(top, platform={"os": "linux", "architecture": "arm64"})
        real = dict(top, platform={"os": "linux", "architecture": oci.host_platform()[1]})
        nested = json.dumps(
            {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [decoy, real]}
        ).encode()
        top = {"mediaType": oci.OCI_INDEX, "digest": put(nested), "size": len(nested)}
    if ref_name:
        top["annotations"] = {oci.REF_NAME: ref_name}
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [top]}
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return BuiltImage(cfg, manifest, layers)


def write_docker_archive(
    path: Path, layers: list[bytes], repo_tags: list[str], **config: Any
) -> BuiltImage:
    """Write a legacy ``docker save`` tar: manifest.json, repositories, <id>/layer.tar."""
    cfg = image_config(layers, **config)
    staging = path.with_name(path.name + ".d")
    staging.mkdir()
    try:
        config_name = f"{digest_bytes(cfg)[7:]}.json"
        (staging / config_name).write_bytes(cfg)
        names = []
        for layer in layers:
            layer_id = digest_bytes(layer)[7:]
            (staging / layer_id).mkdir(exist_ok=True)
            (staging / layer_id / "layer.tar").write_bytes(layer)
            (staging / layer_id / "VERSION").write_text("1.0")
            names.append(f"{layer_id}/layer.tar")
        manifest = [{"Config": config_name, "RepoTags": repo_tags, "Layers": names}]
        (staging / "manifest.json").write_text(json.dumps(manifest))
        repos: dict[str, dict[str, str]] = {}
        for tag in repo_tags:
            repo, _, version = tag.rpartition(":")
            repos.setdefault(repo, {})[version] = digest_bytes(layers[-1])[7:]
        (staging / "repositories").write_text(json.dumps(repos))
        tar_directory(staging, path)
    finally:
        shutil.rmtree(staging)
    return BuiltImage(cfg, b"", layers)


def tar_directory(src: Path, dest: Path) -> None:
    """Tar the contents of ``src`` (paths relative to it) into ``dest``."""
    with tarfile.open(dest, "w") as tar:
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=child.name)
