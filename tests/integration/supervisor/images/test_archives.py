"""Archives made by skopeo (the library podman save uses) load, and layer_dirs work as overlay."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keel_supervisor.images import ImageStore
from keel_supervisor.images.testing import (
    busybox_layer,
    directory,
    file,
    layer_tar,
    opaque,
    tar_directory,
    whiteout,
    write_oci_layout,
)

pytestmark = pytest.mark.host

BASE = layer_tar(
    [
        directory("etc"),
        file("etc/a", b"a"),
        file("etc/b", b"b"),
        directory("var/cache"),
        file("var/cache/old", b"o"),
        file("keep", b"k"),
    ]
)
TOP = layer_tar([whiteout("etc/a"), opaque("var/cache"), file("var/cache/new", b"n")])


def skopeo(*args: str) -> None:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo missing: run ./dev (system-packages.txt)")
    subprocess.run(
        ["skopeo", "--insecure-policy", *args], check=True, capture_output=True, timeout=120
    )


@pytest.fixture
def layout(tmp_path: Path):
    built = write_oci_layout(tmp_path / "layout", [busybox_layer(), BASE, TOP], ref_name="v1")
    return tmp_path / "layout", built


@pytest.mark.parametrize(
    ("transport", "name", "expected_ref"),
    [
        ("docker-archive", "save.tar:keel/demo:v1", "docker.io/keel/demo:v1"),
        ("oci-archive", "oci.tar:v1", "localhost/oci:v1"),
        ("oci-archive", "named.tar:quay.io/keel/demo:2", "quay.io/keel/demo:2"),
    ],
)
def test_skopeo_archives_load(tmp_path, layout, transport, name, expected_ref):
    path, built = layout
    skopeo("copy", f"oci:{path}:v1", f"{transport}:{tmp_path / name}")
    store = ImageStore(tmp_path / "store")
    [image] = store.load(tmp_path / name.split(":", 1)[0])
    assert image.id == built.id
    assert image.references == (expected_ref,)
    assert len(image.layer_dirs()) == 3


def test_layer_dirs_mount_as_overlay_with_whiteouts(tmp_path, layout):
    path, _ = layout
    store = ImageStore(tmp_path / "store")
    [image] = store.load(path)
    merged = tmp_path / "merged"
    merged.mkdir()
    lower = ":".join(str(d) for d in reversed(image.layer_dirs()))  # overlay: highest first
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", str(merged)],
        check=True,
        capture_output=True,
    )
    try:
        assert sorted(os.listdir(merged / "etc")) == ["b", "passwd"]  # etc/a whited out
        assert os.listdir(merged / "var/cache") == ["new"]  # opaque: "old" hidden
        assert (merged / "keep").read_bytes() == b"k"
        out = subprocess.run(
            ["chroot", str(merged), "/bin/sh", "-c", "cat /etc/b; echo; ls /etc"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert out.split() == ["b", "b", "passwd"]
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_image_with_many_layers_mounts(tmp_path):
    """45 layers: the long layer paths would not fit one page of mount options, the links do."""
    layers = [layer_tar([file(f"f{n}", str(n).encode())]) for n in range(44)]
    layers.append(layer_tar([whiteout("f0")]))
    write_oci_layout(tmp_path / "many", layers, ref_name="v1", compression=None)
    store = ImageStore(tmp_path / "store")
    [image] = store.load(tmp_path / "many")
    dirs = image.layer_dirs()
    assert len(dirs) == 45
    assert sum(len(str(d.resolve())) + 1 for d in dirs) > 4096  # real paths: too long
    merged = tmp_path / "merged"
    merged.mkdir()
    lower = ":".join(str(d) for d in reversed(dirs))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", str(merged)],
        check=True,
        capture_output=True,
    )
    try:
        assert len(os.listdir(merged)) == 43  # f1..f43; f0 whited out
        assert (merged / "f43").read_bytes() == b"43"
    finally:
        subprocess.run(["umount", str(merged)], check=True)


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Run podman with its own storage (vfs) in a temporary directory, removed afterwards."""
    if shutil.which("podman") is None:
        pytest.fail("podman missing: run ./dev (system-packages.txt)")
    runroot = tempfile.mkdtemp(prefix="keel-podman-")  # podman wants it under 50 characters
    isolated = [
        "--root", str(tmp_path / "podman"), "--runroot", runroot,
        "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
    ]  # fmt: skip

    def run(*args: str) -> None:
        done = subprocess.run(
            ["podman", *isolated, *args], check=False, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} failed: {done.stderr}")

    yield run
    shutil.rmtree(runroot, ignore_errors=True)


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_save_archives_load(tmp_path, layout, podman, fmt):
    """The real ``podman save``, both formats, from podman's own storage (vfs, in tmp)."""
    path, built = layout
    tar_directory(path, tmp_path / "layout.tar")
    podman("load", "-i", str(tmp_path / "layout.tar"))
    podman("tag", built.id[7:19], "localhost/keel/demo:v1")
    podman("save", "--format", fmt, "-o", str(tmp_path / "saved.tar"),
           "localhost/keel/demo:v1")  # fmt: skip
    store = ImageStore(tmp_path / "store")
    [image] = store.load(tmp_path / "saved.tar")
    assert image.id == built.id
    assert image.references == ("localhost/keel/demo:v1",)
    upper = image.layer_dirs()[-1]
    assert os.getxattr(upper / "var/cache", "trusted.overlay.opaque") == b"y"
