"""Pull from a real registry (docker-registry filled with skopeo): open, basic and token auth."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from keel_supervisor.images import DigestMismatch, ImageStore, IncompleteTransfer, RegistryError
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
    digest_ref = f"{open_registry.host}/keel/multi@{manifest_digest}"
    other = ImageStore(tmp_path / "other")
    by_digest = other.pull(digest_ref, insecure=True)
    assert by_digest.id == built.id
    assert by_digest.references == (digest_ref,)
    assert other.get(digest_ref).id == built.id
    assert store.get(digest_ref).id == built.id  # pulled by tag, found by manifest digest


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


def test_broken_transfer_is_never_stored_and_retried(open_registry, cutting_proxy, tmp_path, store):
    path = tmp_path / "big"
    built = write_oci_layout(path, [layer_tar([file("blob", os.urandom(1 << 20))])], ref_name="b")
    open_registry.push(path, "b", "keel/big:b")
    layer_digest = json.loads(built.manifest)["layers"][0]["digest"]
    name = f"{cutting_proxy.host}/keel/big:b"
    with pytest.raises(IncompleteTransfer, match="nothing stored"):
        store.pull(name, insecure=True, retries=0)
    assert cutting_proxy.cut == 1
    assert not store.blobs.has(layer_digest)
    assert store.list() == []
    assert not any(store.tmp.iterdir())
    cutting_proxy.cuts = 1
    assert store.pull(name, insecure=True).id == built.id  # cut once more, then retried
    assert cutting_proxy.cut == 2


def test_cli_pull_uses_saved_login(basic_registry, layout, store, tmp_path, monkeypatch):
    import base64
    import io

    from rich.console import Console

    from keel_supervisor.images import commands

    path, built = layout
    name = basic_registry.push(path, "v1", "keel/saved:v1")
    user, password = basic_registry.creds
    auth_file = tmp_path / "auth.json"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    auth_file.write_text(json.dumps({"auths": {basic_registry.host: {"auth": token}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    out = io.StringIO()
    image = commands.pull(store, name, Console(file=out), insecure=True)
    assert image.id == built.id
    assert f"Pulled: {name}" in out.getvalue()
