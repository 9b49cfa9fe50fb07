"""ImageStore: load (OCI layout dir/tar, docker-archive), layer sharing, remove, pins, gc."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from keel_supervisor.images import (
    ArchiveError,
    DigestMismatch,
    ImageError,
    ImageInUse,
    ImageNotFound,
    ImageStore,
)
from keel_supervisor.images.blobs import digest_bytes
from keel_supervisor.images.testing import (
    busybox_layer,
    directory,
    file,
    layer_tar,
    opaque,
    tar_directory,
    whiteout,
    write_docker_archive,
    write_oci_layout,
)

BASE = layer_tar(
    [
        directory("etc"),
        file("etc/os-release", b"ID=keel\n"),
        directory("bin"),
        file("bin/echo", b"echo", 0o755),
        directory("var/cache"),
        file("var/cache/old", b"o"),
    ]
)
TOP = layer_tar(
    [
        whiteout("bin/echo"),
        opaque("var/cache"),
        file("var/cache/new", b"n"),
        file("app", b"#!/bin/sh\n", 0o755),
    ]
)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def stored_files(store: ImageStore) -> set[str]:
    return {str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_load_oci_layout_directory(store, tmp_path, compression):
    built = write_oci_layout(
        tmp_path / "layout",
        [BASE, TOP],
        compression=compression,
        ref_name="v1",
        Cmd=["/app"],
        Env=["A=1"],
    )
    [image] = store.load(tmp_path / "layout")
    assert image.id == built.id
    assert image.references == ("localhost/layout:v1",)
    assert image.config == {"Cmd": ["/app"], "Env": ["A=1"]}
    lower, upper = image.layer_dirs()
    assert (lower / "bin/echo").read_bytes() == b"echo"
    assert stat.S_ISCHR((upper / "bin/echo").lstat().st_mode)
    assert os.getxattr(upper / "var/cache", "trusted.overlay.opaque") == b"y"
    assert image.size == len("ID=keel\n") + 4 + 1 + 1 + len("#!/bin/sh\n")
    assert store.get("localhost/layout:v1").id == built.id
    assert store.get(built.id[7:19]).id == built.id


def test_load_oci_tar_with_nested_index_picks_this_platform(store, tmp_path):
    write_oci_layout(
        tmp_path / "layout", [BASE], ref_name="docker.io/library/demo:2", index_wrap=True
    )
    tar_directory(tmp_path / "layout", tmp_path / "demo.tar")
    [image] = store.load(tmp_path / "demo.tar")
    assert image.references == ("docker.io/library/demo:2",)
    assert store.get("demo:2").id == image.id


def test_load_docker_archive(store, tmp_path):
    built = write_docker_archive(
        tmp_path / "save.tar", [BASE, TOP], ["demo:v1", "demo:latest"], Entrypoint=["/app"]
    )
    [image] = store.load(tmp_path / "save.tar")
    assert image.id == built.id
    assert image.references == ("docker.io/library/demo:latest", "docker.io/library/demo:v1")
    assert image.config["Entrypoint"] == ["/app"]
    assert [p.name for p in (store.root / "layers/sha256").iterdir()].__len__() == 2
    # the synthesized manifest is stored and names the layers by their blob digests
    manifest = json.loads(store.blobs.read(image.manifest_digest))
    assert [layer["digest"] for layer in manifest["layers"]] == built.diff_ids


def test_layers_shared_between_images_are_unpacked_once(store, tmp_path):
    write_oci_layout(tmp_path / "a", [BASE], ref_name="a")
    write_oci_layout(tmp_path / "b", [BASE, TOP], ref_name="b")
    [a] = store.load(tmp_path / "a")
    [b] = store.load(tmp_path / "b")
    assert a.layer_dirs()[0] == b.layer_dirs()[0]
    assert len(list((store.root / "layers/sha256").iterdir())) == 2


def test_corrupt_blob_is_refused_and_nothing_stored(store, tmp_path):
    built = write_oci_layout(tmp_path / "layout", [BASE, TOP], compression=None)
    victim = tmp_path / "layout/blobs/sha256" / built.diff_ids[1][7:]
    victim.write_bytes(victim.read_bytes().replace(b"#!/bin/sh", b"#!/bin/XX"))
    with pytest.raises(DigestMismatch, match="nothing stored"):
        store.load(tmp_path / "layout")
    assert store.list() == []
    assert not any((store.root / "tmp").iterdir())
    assert not (store.blobs.root / built.diff_ids[1][7:]).exists()


def test_docker_archive_layer_not_matching_diff_id_is_refused(store, tmp_path):
    cfg_layers = [BASE]
    write_docker_archive(tmp_path / "s.tar", cfg_layers, ["x:1"])
    # rewrite the archive with a different layer but the same config
    import tarfile

    with tarfile.open(tmp_path / "s.tar") as src, tarfile.open(tmp_path / "bad.tar", "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m) if m.isfile() else None
            if m.name.endswith("layer.tar"):
                payload = TOP
                m.size = len(payload)
                import io

                data = io.BytesIO(payload)
            dst.addfile(m, data)
    with pytest.raises(DigestMismatch, match="diff_id"):
        store.load(tmp_path / "bad.tar")
    assert store.list() == []


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p.write_text("not a tar"), "not a tar archive"),
        (lambda p: (p.mkdir(), (p / "x").write_text("")), "neither index.json"),
        (lambda p: None, "no such file"),
    ],
)
def test_bad_archives_say_what_they_are(store, tmp_path, setup, message):
    path = tmp_path / "thing"
    setup(path)
    with pytest.raises(ArchiveError, match=message):
        store.load(path)


def test_traversal_archive_refused_and_store_unchanged(store, tmp_path):
    evil = layer_tar([file("../../../../tmp/keel-escape", b"x")])
    write_oci_layout(tmp_path / "evil", [evil], ref_name="evil")
    with pytest.raises(ArchiveError, match=r"evil.*'\.\./\.\./\.\./\.\./tmp/keel-escape'"):
        store.load(tmp_path / "evil")
    assert not Path("/tmp/keel-escape").exists()
    assert store.list() == []
    assert not list((store.root / "layers/sha256").iterdir())


def test_get_unknown_image_says_what_to_do(store):
    with pytest.raises(ImageNotFound, match="keel pull nope"):
        store.get("nope")


def test_remove_untags_then_deletes_and_gc_frees(store, tmp_path):
    write_docker_archive(tmp_path / "s.tar", [BASE, TOP], ["demo:v1", "demo:v2"])
    write_oci_layout(tmp_path / "other", [BASE], ref_name="keep")
    [image] = store.load(tmp_path / "s.tar")
    [other] = store.load(tmp_path / "other")
    with pytest.raises(ImageError, match="several names"):
        store.remove(image.id)
    assert store.remove("demo:v1").untagged == ["docker.io/library/demo:v1"]
    assert store.get(image.id).references == ("docker.io/library/demo:v2",)
    result = store.remove("demo:v2")
    assert result.deleted == [image.id]
    with pytest.raises(ImageNotFound):
        store.get(image.id)
    freed = store.gc()
    assert freed > len(TOP)
    # the shared base layer stays for the other image, the top layer is gone
    assert other.layer_dirs()[0].is_dir()
    assert len(list((store.root / "layers/sha256").iterdir())) == 1
    assert store.gc() == 0


def test_pinned_image_is_not_removed_without_force(store, tmp_path):
    write_oci_layout(tmp_path / "layout", [BASE], ref_name="v1")
    [image] = store.load(tmp_path / "layout")
    store.pin(image.id, "web-1")
    with pytest.raises(ImageInUse, match="web-1"):
        store.remove("localhost/layout:v1")
    result = store.remove("localhost/layout:v1", force=True)
    assert result.deleted == []
    assert store.list() == []
    store.gc()
    assert image.layer_dirs()[0].is_dir()  # still used by the container
    store.unpin(image.id, "web-1")
    assert store.gc() > 0
    assert not list((store.root / "layers/sha256").iterdir())
    assert not list(store.blobs.digests())
    assert not list((store.root / "l").iterdir())


def test_gc_removes_leftovers_of_interrupted_imports(store):
    (store.tmp / "layer-123-abc").mkdir()
    (store.tmp / "layer-123-abc" / "partial").write_bytes(b"x" * 100)
    (store.tmp / "blob-1").write_bytes(b"y" * 50)
    assert store.gc() == 150
    assert not any(store.tmp.iterdir())


def test_busybox_image_has_a_shell(store, tmp_path):
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static not installed")
    write_oci_layout(tmp_path / "bb", [busybox_layer()], ref_name="busybox")
    [image] = store.load(tmp_path / "bb")
    rootfs = image.layer_dirs()[0]
    assert os.readlink(rootfs / "bin/sh") == "busybox"
    assert os.access(rootfs / "bin/busybox", os.X_OK)


def test_docker_25_save_names_oci_images_from_manifest_json(store, tmp_path):
    built = write_oci_layout(tmp_path / "d25", [BASE], ref_name=None, compression=None)
    manifest = [
        {
            "Config": f"blobs/sha256/{built.id[7:]}",
            "RepoTags": ["keel/app:25"],
            "Layers": [f"blobs/sha256/{built.diff_ids[0][7:]}"],
        }
    ]
    (tmp_path / "d25/manifest.json").write_text(json.dumps(manifest))
    tar_directory(tmp_path / "d25", tmp_path / "d25.tar")
    [image] = store.load(tmp_path / "d25.tar")
    assert image.id == built.id
    assert image.references == ("docker.io/keel/app:25",)


def test_concurrent_loads_of_one_image_share_one_layer(store, tmp_path):
    import threading

    write_oci_layout(tmp_path / "layout", [BASE, TOP], ref_name="v1")
    errors: list[BaseException] = []

    def load() -> None:
        try:
            ImageStore(store.root).load(tmp_path / "layout")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list()) == 1
    assert len(list((store.root / "layers/sha256").iterdir())) == 2
    assert store.gc() == 0  # nothing left over


@pytest.mark.parametrize("how", ["gzip", "xz", "bz2"])
def test_load_compressed_docker_save(store, tmp_path, how):
    import bz2
    import gzip
    import lzma

    compress = {"gzip": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress}[how]
    built = write_docker_archive(tmp_path / "s.tar", [BASE, TOP], ["demo:gz"])
    (tmp_path / "s.tar.x").write_bytes(compress((tmp_path / "s.tar").read_bytes()))
    [image] = store.load(tmp_path / "s.tar.x")
    assert image.id == built.id
    assert image.references == ("docker.io/library/demo:gz",)
    assert not any(store.tmp.iterdir())  # the decompressed copy is gone


def test_artifacts_beside_images_are_skipped(store, tmp_path):
    built = write_oci_layout(tmp_path / "layout", [BASE], ref_name="v1")
    blobs = tmp_path / "layout/blobs/sha256"
    empty = b"{}"
    (blobs / digest_bytes(empty)[7:]).write_bytes(empty)
    sbom = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/spdx+json",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": digest_bytes(empty),
                "size": 2,
            },
            "layers": [],
        }
    ).encode()
    (blobs / digest_bytes(sbom)[7:]).write_bytes(sbom)
    index = json.loads((tmp_path / "layout/index.json").read_text())
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest_bytes(sbom),
            "size": len(sbom),
        }
    )
    (tmp_path / "layout/index.json").write_text(json.dumps(index))
    [image] = store.load(tmp_path / "layout")
    assert image.id == built.id


def test_verify_finds_corrupt_blobs_and_missing_layers(store, tmp_path):
    write_oci_layout(tmp_path / "layout", [BASE, TOP], ref_name="v1")
    [image] = store.load(tmp_path / "layout")
    assert store.verify() == []
    layer_blob = json.loads(store.blobs.read(image.manifest_digest))["layers"][0]["digest"]
    store.blobs.path(layer_blob).write_bytes(b"bit rot")
    import shutil

    shutil.rmtree(store.root / "layers/sha256" / image.diff_ids[1][7:])
    problems = store.verify()
    assert len(problems) == 2
    assert problems[0].startswith(f"blob {layer_blob} is corrupt")
    assert problems[1] == f"image {image.id}: layer {image.diff_ids[1]} is missing"
