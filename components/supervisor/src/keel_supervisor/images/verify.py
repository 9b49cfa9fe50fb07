"""Check a store against itself: blobs hash to their names, images have all their parts.

For after a crash, a full disk or a hand edit: ``ImageStore.verify()`` lists what is wrong
(and what to do), changing nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from keel_supervisor.images.blobs import CHUNK, BlobStore, digest_hex
from keel_supervisor.images.image import short_link


def blob_problems(blobs: BlobStore) -> list[str]:
    """Blobs whose content does not hash to their name."""
    problems = []
    for digest in sorted(blobs.digests()):
        hasher = hashlib.sha256()
        with blobs.open(digest) as f:
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            problems.append(
                f"blob {digest} is corrupt (content hashes to {actual}): run 'keel rmi --force' "
                "on the images using it, then pull or load them again"
            )
    return problems


def image_problems(
    root: Path,
    blobs: BlobStore,
    records: dict[str, dict[str, Any]],
    references: dict[str, str],
) -> list[str]:
    """Images missing a blob, a layer or a layer link; names of images that do not exist."""
    problems = []
    for image_id, record in sorted(records.items()):
        wanted = [record["manifest_digest"], record["config_digest"]]
        wanted += [layer["digest"] for layer in record["layers"]]
        for digest in wanted:
            if not blobs.has(digest):
                problems.append(f"image {image_id}: blob {digest} is missing")
        for layer in record["layers"]:
            diff_id = layer["diff_id"]
            tree = root / "layers" / "sha256" / digest_hex(diff_id) / "root"
            if not tree.is_dir():
                problems.append(f"image {image_id}: layer {diff_id} is missing")
            elif not (root / "l" / short_link(diff_id)).is_dir():
                problems.append(f"image {image_id}: link l/{short_link(diff_id)} is missing")
            elif not (tree.parent / "layer.json").is_file():
                problems.append(f"image {image_id}: layer {diff_id} has no layer.json")
    for name, image_id in sorted(references.items()):
        if image_id not in records:
            problems.append(f"name {name} points to {image_id}, which is not in the store")
    return problems
