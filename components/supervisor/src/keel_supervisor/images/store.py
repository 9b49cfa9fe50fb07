"""The image store: images by id and name, their blobs, their unpacked layers, pins and gc.

On disk, below ``root`` (e.g. /var/lib/keel/images)::

    blobs/sha256/<hex>          manifests, configs and layer blobs, content-addressed
    layers/sha256/<hex>/root    a layer unpacked once per diff_id (an overlayfs lowerdir)
    layers/sha256/<hex>/layer.json
    images/<hex>.json           one record per image, named by its id (config digest)
    l/<16 hex>                  short links to layers/sha256/<hex>/root (overlay lowerdirs)
    references.json             name -> image id
    pins/<hex>/<owner>          containers using an image
    tmp/                        downloads and unpacks in progress, never visible elsewhere

Everything appears by ``rename``: a blob after its digest checked out, a layer after it unpacked
completely and hashed to its diff_id, an image record after all its layers are in place. Imports
hold ``.lock`` shared, ``gc`` and ``remove`` hold it exclusively, so gc never frees what an import
in another process is about to reference.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from rich.progress import Progress

from keel_supervisor.images import archive, oci, verify
from keel_supervisor.images.blobs import (
    BlobStore,
    digest_bytes,
    digest_hex,
    remove_tree,
    sync_filesystem,
    tree_size,
)
from keel_supervisor.images.errors import (
    AmbiguousImage,
    ImageError,
    ImageInUse,
    ImageNotFound,
)
from keel_supervisor.images.image import Image, RemoveResult, short_link
from keel_supervisor.images.layer import unpack_layer
from keel_supervisor.images.reference import is_digest, normalize, parse_reference
from keel_supervisor.images.registry import RegistryClient

log = logging.getLogger("keel.supervisor.images")

_ID_PREFIX = re.compile(r"^(?:sha256:)?[0-9a-f]{4,64}$")


class ImageStore:
    """Images under ``root``; safe to use from several processes at once."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        for sub in ("images", "layers/sha256", "pins", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.root, self.tmp)
        self.layers = self.root / "layers" / "sha256"
        self.links = self.root / "l"
        self.links.mkdir(exist_ok=True)

    # -- locks and small files ---------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, name: str, *, shared: bool) -> Iterator[None]:
        with (self.root / name).open("a") as f:
            fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _write_json(self, path: Path, value: Any) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("w") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _references(self) -> dict[str, str]:
        try:
            refs = json.loads((self.root / "references.json").read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in refs.items()}

    def _record_path(self, image_id: str) -> Path:
        return self.root / "images" / f"{digest_hex(image_id)}.json"

    def _records(self) -> dict[str, dict[str, Any]]:
        out = {}
        for path in (self.root / "images").glob("*.json"):
            record = json.loads(path.read_text())
            out[record["id"]] = record
        return out

    def _image(self, record: dict[str, Any], refs: dict[str, str]) -> Image:
        config = json.loads(self.blobs.read(record["config_digest"]))
        return Image(
            id=record["id"],
            references=tuple(sorted(r for r, i in refs.items() if i == record["id"])),
            config=dict(config.get("config") or {}),
            size=int(record["size"]),
            manifest_digest=record["manifest_digest"],
            diff_ids=tuple(layer["diff_id"] for layer in record["layers"]),
            created=str(config.get("created", record.get("stored", ""))),
            os=str(config.get("os", "")),
            architecture=str(config.get("architecture", "")),
            layers_root=self.layers,
        )

    # -- queries -----------------------------------------------------------------------------
    def list(self) -> builtins.list[Image]:
        """Every image (images force-removed while a container still uses them excluded)."""
        refs = self._references()
        records = [r for r in self._records().values() if not r.get("removed")]
        return sorted(
            (self._image(r, refs) for r in records), key=lambda i: i.references or (i.id,)
        )

    def get(self, reference_or_id: str) -> Image:
        """An image by name (``busybox``, ``127.0.0.1:5000/app:1``) or id (or unique id prefix)."""
        return self._image(*self._find(reference_or_id))

    def _find(self, text: str) -> tuple[dict[str, Any], dict[str, str]]:
        refs = self._references()
        records = self._records()
        with contextlib.suppress(ImageError):
            ref = parse_reference(text)
            image_id = refs.get(str(ref))
            if image_id in records:
                return records[image_id], refs
            if ref.digest:  # name@digest of an image pulled by tag: match its manifest
                for record in records.values():
                    if record["manifest_digest"] == ref.digest and not record.get("removed"):
                        return record, refs
        if _ID_PREFIX.match(text):
            prefix = text if text.startswith("sha256:") else f"sha256:{text}"
            found = [r for i, r in records.items() if i.startswith(prefix) and not r.get("removed")]
            if len(found) == 1:
                return found[0], refs
            if len(found) > 1:
                raise AmbiguousImage(
                    f"image id prefix {text!r} matches {len(found)} images; give more digits"
                )
        raise ImageNotFound(text)

    # -- import ------------------------------------------------------------------------------
    def load(self, archive_path: Path, *, progress: Progress | None = None) -> builtins.list[Image]:
        """Import every image of a docker/podman save archive or an OCI layout (dir or tar)."""
        source = archive.open_source(Path(archive_path), scratch=self.tmp)
        images: builtins.list[Image] = []
        try:
            with self._lock(".lock", shared=True):
                for item in archive.scan(source):
                    images.append(self._load_item(source, item, progress))
        finally:
            source.close()
        return images

    def _load_item(
        self, source: archive.Source, item: archive.ImportItem, progress: Progress | None
    ) -> Image:
        config_digest = self.blobs.put_bytes(item.config, item.config_digest, source=item.where)
        config = oci.parse_json(item.config, f"{item.where} config")
        diff_ids = oci.diff_ids(config, f"{item.where} config")
        if len(diff_ids) != len(item.layers):
            raise ImageError(
                f"{item.where}: {len(item.layers)} layers but the config lists "
                f"{len(diff_ids)} diff_ids (corrupt archive)"
            )
        descriptors = []
        for layer, diff_id in zip(item.layers, diff_ids, strict=True):
            want = layer.descriptor
            where = f"{source.label}: {layer.member}"
            with source.open(layer.member) as stream, _task(progress, where, want) as advance:
                digest = self.blobs.put_stream(
                    stream,
                    want.digest if want else None,
                    want.size if want else None,
                    source=where,
                    advance=advance,
                )
            self._ensure_layer(digest, diff_id, where)
            descriptors.append(want or self._describe_layer(digest))
        manifest = item.manifest or _synthesize_manifest(item.config, descriptors)
        return self._commit(manifest, config_digest, descriptors, diff_ids, item.names)

    def _describe_layer(self, digest: str) -> oci.Descriptor:
        with self.blobs.open(digest) as f:
            head = f.read(4)
        kind = oci.OCI_LAYER
        if head.startswith(b"\x1f\x8b"):
            kind += "+gzip"
        elif head == b"\x28\xb5\x2f\xfd":
            kind += "+zstd"
        size = self.blobs.path(digest).stat().st_size
        return oci.Descriptor(kind, digest, size, {}, {})

    def _ensure_layer(self, blob_digest: str, diff_id: str, where: str) -> None:
        """Unpack the layer blob once per diff_id (reused by every image that shares it)."""
        final = self.layers / digest_hex(diff_id)
        if final.is_dir():
            self._link_layer(diff_id)
            return
        staging = self._staging()
        try:
            with self.blobs.open(blob_digest) as blob:
                stats = unpack_layer(blob, staging / "root", source=where, expected_diff_id=diff_id)
            info = {
                "diff_id": diff_id,
                "blob": blob_digest,
                "size": stats.size,
                "files": stats.files,
                "whiteouts": stats.whiteouts,
                "opaque_dirs": stats.opaque_dirs,
                "skipped_devices": stats.skipped_devices,
            }
            self._write_json(staging / "layer.json", info)
            sync_filesystem(staging)  # a visible layer is a complete layer, even after a crash
            try:
                os.rename(staging, final)
            except OSError:
                if not final.is_dir():
                    raise  # else another import unpacked the same layer first
            log.debug("layer unpacked", extra=info)
        finally:
            remove_tree(staging)
        self._link_layer(diff_id)

    def _link_layer(self, diff_id: str) -> None:
        link = self.links / short_link(diff_id)
        if not link.is_symlink():
            tmp = self.links / f".{link.name}.{os.getpid()}.{os.urandom(4).hex()}"
            tmp.symlink_to(f"../layers/sha256/{digest_hex(diff_id)}/root")
            os.replace(tmp, link)

    def _staging(self) -> Path:
        path = self.tmp / f"layer-{os.getpid()}-{os.urandom(6).hex()}"
        path.mkdir(mode=0o700)
        return path

    def _commit(
        self,
        manifest: bytes,
        config_digest: str,
        layers: builtins.list[oci.Descriptor],
        diff_ids: builtins.list[str],
        names: builtins.list[str],
    ) -> Image:
        manifest_digest = self.blobs.put_bytes(manifest)
        size = 0
        for diff_id in diff_ids:
            info = json.loads((self.layers / digest_hex(diff_id) / "layer.json").read_text())
            size += int(info["size"])
        record = {
            "id": config_digest,
            "config_digest": config_digest,
            "manifest_digest": manifest_digest,
            "layers": [
                {"digest": d.digest, "media_type": d.media_type, "diff_id": diff_id}
                for d, diff_id in zip(layers, diff_ids, strict=True)
            ],
            "size": size,
            "stored": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with self._lock(".index.lock", shared=False):
            self._write_json(self._record_path(config_digest), record)
            refs = self._references()
            for name in names:
                refs[name] = config_digest
            self._write_json(self.root / "references.json", refs)
        log.info("image stored", extra={"image": config_digest, "names": names})
        return self._image(record, refs)

    def pull(
        self,
        reference: str,
        *,
        insecure: bool = False,
        auth: tuple[str, str] | None = None,
        progress: Progress | None = None,
        retries: int = 3,
    ) -> Image:
        """Pull ``reference`` from its registry (OCI distribution v2; basic or bearer token auth).

        ``insecure`` uses plain HTTP (a local test registry); ``auth`` is (username, password);
        a blob transfer that breaks off is tried ``retries`` more times.
        """
        ref = parse_reference(reference)
        client = RegistryClient(ref, insecure=insecure, auth=auth, retries=retries)
        with self._lock(".lock", shared=True):
            fetched = client.fetch_manifest()
            config_digest = client.fetch_blob(fetched.config, self.blobs, progress)
            config = oci.parse_json(self.blobs.read(config_digest), f"{ref} config")
            diff_ids = oci.diff_ids(config, f"{ref} config")
            if len(diff_ids) != len(fetched.layers):
                raise ImageError(
                    f"{ref}: manifest has {len(fetched.layers)} layers but the config lists "
                    f"{len(diff_ids)} diff_ids"
                )
            for desc, diff_id in zip(fetched.layers, diff_ids, strict=True):
                if not (self.layers / digest_hex(diff_id)).is_dir():
                    client.fetch_blob(desc, self.blobs, progress)
                    self._ensure_layer(desc.digest, diff_id, f"{ref.name}@{desc.digest}")
                elif not self.blobs.has(desc.digest):
                    client.fetch_blob(desc, self.blobs, progress)
            names = [str(ref)]  # name:tag, or name@digest when pulled by digest
            return self._commit(fetched.manifest, config_digest, fetched.layers, diff_ids, names)

    def tag(self, reference_or_id: str, name: str) -> Image:
        """Give an image another name (moving the name if another image had it)."""
        record, _refs = self._find(reference_or_id)
        with self._lock(".index.lock", shared=False):
            refs = self._references()
            refs[normalize(name)] = record["id"]
            self._write_json(self.root / "references.json", refs)
        return self._image(record, refs)

    # -- pins, removal, gc -------------------------------------------------------------------
    def pin(self, image_id: str, owner: str) -> None:
        """Record that ``owner`` (a container) uses the image, so it is not removed under it."""
        with self._lock(".lock", shared=True):  # not while gc decides what is unused
            record, _refs = self._find(image_id)
            pins = self.root / "pins" / digest_hex(record["id"])
            pins.mkdir(exist_ok=True)
            (pins / quote(owner, safe="")).touch()

    def unpin(self, image_id: str, owner: str) -> None:
        """Forget that ``owner`` uses the image (no error if it did not)."""
        if is_digest(image_id):
            (self.root / "pins" / digest_hex(image_id) / quote(owner, safe="")).unlink(
                missing_ok=True
            )
            return
        with contextlib.suppress(ImageNotFound):
            record, _refs = self._find(image_id)
            self.unpin(record["id"], owner)

    def pins(self, image_id: str) -> builtins.list[str]:
        """Owners that pinned the image."""
        pins = self.root / "pins" / digest_hex(image_id)
        return sorted(unquote(p.name) for p in pins.iterdir()) if pins.is_dir() else []

    def remove(self, reference_or_id: str, force: bool = False) -> RemoveResult:
        """Remove a name, or the image when it was its last name or it was given by id.

        Refuses an image a container uses (naming the container) unless ``force``; forced, the
        image loses its names and is deleted by ``gc`` once no container uses it.
        Disk space is given back by ``gc``.
        """
        result = RemoveResult()
        with self._lock(".lock", shared=False), self._lock(".index.lock", shared=False):
            record, refs = self._find(reference_or_id)
            image_id = record["id"]
            names = sorted(r for r, i in refs.items() if i == image_id)
            with contextlib.suppress(ImageError):
                name = normalize(reference_or_id)
                if name in names and len(names) > 1:
                    del refs[name]
                    self._write_json(self.root / "references.json", refs)
                    result.untagged.append(name)
                    return result
            users = self.pins(image_id)
            if users and not force:
                raise ImageInUse(
                    f"image {reference_or_id!r} ({image_id[:19]}) is used by container(s) "
                    f"{', '.join(users)}: remove them first ('keel rm'), or use --force"
                )
            if len(names) > 1 and not force:
                raise ImageError(
                    f"image {image_id[:19]} has several names ({', '.join(names)}): remove them "
                    "one by one, or use --force to remove the image and all its names"
                )
            for name in names:
                del refs[name]
            self._write_json(self.root / "references.json", refs)
            result.untagged.extend(names)
            if users:
                record["removed"] = True
                self._write_json(self._record_path(image_id), record)
            else:
                self._record_path(image_id).unlink()
                result.deleted.append(image_id)
        return result

    def verify(self) -> builtins.list[str]:
        """What is wrong (corrupt or missing blobs, missing layers). Changes nothing."""
        with self._lock(".lock", shared=True):
            return verify.blob_problems(self.blobs) + verify.image_problems(
                self.root, self.blobs, self._records(), self._references()
            )

    def gc(self) -> int:
        """Delete blobs and layers no image references, and leftovers of interrupted imports.

        Returns the bytes freed.
        """
        freed = 0
        with self._lock(".lock", shared=False):
            live_blobs: set[str] = set()
            live_layers: set[str] = set()
            for image_id, record in self._records().items():
                if record.get("removed") and not self.pins(image_id):
                    self._record_path(image_id).unlink()
                    continue
                live_blobs.update((record["manifest_digest"], record["config_digest"]))
                for layer in record["layers"]:
                    live_blobs.add(layer["digest"])
                    live_layers.add(digest_hex(layer["diff_id"]))
            for digest in list(self.blobs.digests()):
                if digest not in live_blobs:
                    freed += self.blobs.delete(digest)
            for layer_dir in self.layers.iterdir():
                if layer_dir.name not in live_layers:
                    freed += tree_size(layer_dir)
                    remove_tree(layer_dir)
            for link in self.links.iterdir():
                if not link.exists():  # its layer is gone
                    link.unlink()
            for leftover in self.tmp.iterdir():  # no import runs: they hold .lock shared
                freed += tree_size(leftover) if leftover.is_dir() else leftover.stat().st_size
                remove_tree(leftover)
            for pins in (self.root / "pins").iterdir():
                if not any(pins.iterdir()):
                    pins.rmdir()
        log.info("image gc", extra={"freed": freed})
        return freed


@contextlib.contextmanager
def _task(progress: Progress | None, what: str, desc: oci.Descriptor | None) -> Iterator[Any]:
    if progress is None:
        yield None
        return
    task = progress.add_task(what[-60:], total=desc.size if desc else None)
    try:
        yield lambda n: progress.advance(task, n)
    finally:
        progress.remove_task(task)


def _synthesize_manifest(config: bytes, layers: list[oci.Descriptor]) -> bytes:
    """An OCI manifest for images that came without one (docker-archive)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {
            "mediaType": oci.OCI_CONFIG,
            "digest": digest_bytes(config),
            "size": len(config),
        },
        "layers": [d.to_json() for d in layers],
    }
    return json.dumps(manifest, sort_keys=True).encode()
