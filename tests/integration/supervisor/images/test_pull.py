"""Pull from a real registry (docker-registry filled with skopeo): open, basic and token auth."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from keel_supervisor.images import DigestMismatch, ImageStore, RegistryError
from keel_supervisor.images.testing import (
    busybox_layer,
    file,
    layer_tar,
    opaque,
    whiteout,
    write_oci_layout,
)

pytestmark = pytest.mark.host

TOP = layer_tar(
    [whiteout("bin/ls"), opaque("etc"), file("etc/motd", b"keel\n"), file("hello", b"hi\n", 0o755)]
)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("layout") / "bb"
    built = write_oci_layout(
        path, [busybox_layer(), TOP], ref_name="v1", Cmd=["/bin/sh"], Env=["PATH=/bin"]
    )
    return path, built


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def test_pull_multi_layer_image_with_whiteouts(open_registry, layout, store):
    path, built = layout
    name = open_registry.push(path, "v1", "keel/busybox:v1")
    image = store.pull(name, insecure=True)
    assert image.id == built.id
    assert image.references == (name,)
    assert image.config["Env"] == ["PATH=/bin"]
    base, top = image.layer_dirs()
    assert os.access(base / "bin/busybox", os.X_OK)
    assert stat.S_ISCHR((top / "bin/ls").lstat().st_mode)  # whiteout, overlay form
    assert os.getxattr(top / "etc", "trusted.overlay.opaque") == b"y"
    # a second pull finds everything in place: same layer dirs, nothing unpacked again
    inode = (top / "hello").stat().st_ino
    again = store.pull(name, insecure=True)
    assert again.id == image.id
    assert (again.layer_dirs()[1] / "hello").stat().st_ino == inode


def test_pull_by_digest_and_from_multi_platform_index(open_registry, tmp_path, store):
    path = tmp_path / "multi"
    built = write_oci_layout(path, [busybox_layer()], ref_name="m", index_wrap=True)
    name = open_registry.push(path, "m", "keel/multi:m", all_platforms=True)
    image = store.pull(name, insecure=True)
    assert image.id == built.id
    manifest_digest = image.manifest_digest
    by_digest = ImageStore(tmp_path / "other").pull(
        f"{open_registry.host}/keel/multi@{manifest_digest}", insecure=True
    )
    assert by_digest.id == built.id


def test_missing_tag_and_unreachable_registry_say_so(open_registry, store):
    with pytest.raises(RegistryError, match="not found"):
        store.pull(f"{open_registry.host}/keel/nothing:here", insecure=True)
    with pytest.raises(RegistryError, match="cannot reach registry"):
        store.pull("127.0.0.1:9/keel/x:1", insecure=True)


def test_corrupt_blob_in_registry_is_refused(open_registry, tmp_path, store):
    path = tmp_path / "victim"
    built = write_oci_layout(path, [layer_tar([file("data", b"A" * 4096)])], ref_name="c")
    name = open_registry.push(path, "c", "keel/corrupt:c")
    layer_digest = json.loads(built.manifest)["layers"][0]["digest"]
    blob = open_registry.blob_file(layer_digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch, match="nothing stored"):
        store.pull(name, insecure=True)
    assert store.list() == []
    assert not any(store.tmp.iterdir())


def test_basic_auth(basic_registry, layout, store):
    path, built = layout
    name = basic_registry.push(path, "v1", "keel/private:v1")
    with pytest.raises(RegistryError, match="needs a login"):
        store.pull(name, insecure=True)
    with pytest.raises(RegistryError, match="refused access"):
        store.pull(name, insecure=True, auth=("keel", "wrong"))
    assert store.pull(name, insecure=True, auth=basic_registry.creds).id == built.id


def test_bearer_token_auth(token_registry, layout, store):
    path, built = layout
    name = token_registry.push(path, "v1", "keel/token:v1")
    tokens = token_registry.tokens
    refused_before = tokens.refused
    with pytest.raises(RegistryError, match="refused a token"):
        store.pull(name, insecure=True)
    assert tokens.refused == refused_before + 1
    issued_before = len(tokens.issued)
    image = store.pull(name, insecure=True, auth=token_registry.creds)
    assert image.id == built.id
    assert tokens.issued[issued_before:] == ["repository:keel/token:pull"]
    assert json.loads(store.blobs.read(image.manifest_digest))["schemaVersion"] == 2


def test_https_registry_verified_against_trusted_certificates(
    tls_registry, layout, store, monkeypatch
):
    path, built = layout
    name = tls_registry.push(path, "v1", "keel/tls:v1")
    with pytest.raises(RegistryError, match=r"TLS with .* failed .*--insecure"):
        store.pull(name)  # self-signed: not trusted
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.storage.parent / "tls.crt"))
    assert store.pull(name).id == built.id
