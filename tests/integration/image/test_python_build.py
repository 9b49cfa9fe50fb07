"""Images with components get their Python in /usr, reproducibly (host: builds, unsquashfs).

The default definition with the store and the supervisor turned on (``pyimage``): the
wrappers, the packages with their entry-point metadata and precompiled pycs, nothing of
the build host, and two builds from empty stage caches give the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keel_image import build, pydists, pylayers, recipe
from keel_image.cache import StageCache
from keel_image.errors import BuildError
from keel_image.pydists import source_root
from keel_image.testing import components_on

from .conftest import DEFINITION

pytestmark = pytest.mark.host

COMPONENTS = components_on("store", "supervisor")


@pytest.fixture(scope="module")
def py_built(tmp_path_factory: pytest.TempPathFactory):
    """The [store, supervisor] variant (shared stage cache; a fresh output directory)."""
    out = tmp_path_factory.mktemp("out")
    return build(DEFINITION, out_dir=out, progress=False, extra_plugins=COMPONENTS)


@pytest.fixture(scope="module")
def usr(py_built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built /usr, unpacked (from the system stage's usr.img)."""
    image = StageCache().path("system", py_built.manifest["stages"]["system"]) / "usr.img"
    dest = tmp_path_factory.mktemp("usr") / "usr"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", dest, image], check=True)
    return dest


def test_listing_has_wrappers_packages_and_metadata(py_built):
    image = StageCache().path("system", py_built.manifest["stages"]["system"]) / "usr.img"
    listing = subprocess.run(
        ["unsquashfs", "-lls", image], capture_output=True, text=True, check=True
    ).stdout
    lines = {
        line.split("squashfs-root", 1)[1].split(" -> ")[0]: line
        for line in listing.splitlines()
        if "squashfs-root" in line
    }
    assert "-> ../lib/keel/bin/keel-store" in lines["/bin/keel-store"]
    assert lines["/bin/keel"].startswith("-rwxr-xr-x")  # keel-base's dispatcher stays
    for path in (
        "/lib/keel/bin/keel",
        "/lib/keel/bin/keel-store",
        "/lib/python3/dist-packages/keel.pth",
        "/lib/keel/python/keel_store/__pycache__/daemon.cpython-311.pyc",
        "/lib/keel/python/keel_supervisor/__pycache__/cli.cpython-311.pyc",
        "/lib/keel/python/keel_store/_generated/etcdserverpb/__pycache__/rpc_pb2.cpython-311.pyc",
        "/lib/keel/python/keel_store-0.1.0.dist-info/entry_points.txt",
        "/lib/keel/python/keel_supervisor-0.1.0.dist-info/entry_points.txt",
        "/lib/keel/python/grpc/__pycache__/__init__.cpython-311.pyc",
        "/lib/keel/python/pydantic_core/__pycache__/__init__.cpython-311.pyc",
    ):
        assert path in lines, f"{path} is not in /usr"
    assert "/lib/binfmt.d/python3.11.conf" not in lines
    for path in lines:
        if path.startswith("/lib/keel/python/"):
            name = path.rsplit("/", 1)[1]
            assert name not in {"RECORD", "INSTALLER", "direct_url.json"}, path
            assert "/tests/" not in path, path
            assert not name.endswith(".pyi"), path
    pythons = {p["name"] for p in py_built.manifest["packages"]}
    assert {"python3", "libstdc++6", "runc"} <= pythons
    dists = {d["name"]: d["version"] for d in py_built.manifest["python"]}
    assert dists["keel-store"] == "0.1.0"
    assert dists["grpcio"] == "1.85.3"  # the pin in constraints.txt
    assert {"keel-core", "keel-supervisor", "pydantic-core", "aetcd"} <= set(dists)


def test_installed_files_say_where_they_run_not_where_they_were_built(usr: Path):
    assert (usr / "lib/python3/dist-packages/keel.pth").read_text() == "/usr/lib/keel/python\n"
    eps = (usr / "lib/keel/python/keel_store-0.1.0.dist-info/entry_points.txt").read_text()
    assert "store = keel_store.plugin" in eps
    assert "keel-store = keel_store.daemon:main" in eps
    wrapper = (usr / "lib/keel/bin/keel").read_text()
    assert wrapper.startswith("#!/usr/bin/python3 -I\n")
    assert "from keel_core.cli import main" in wrapper
    # pycs record the guest path, and are not checked against file times (read-only /usr)
    pyc = (usr / "lib/keel/python/keel_core/__pycache__/cli.cpython-311.pyc").read_bytes()
    assert int.from_bytes(pyc[4:8], "little") == 1  # unchecked-hash
    assert b"/usr/lib/keel/python/keel_core/cli.py" in pyc
    # (third-party extensions carry their own builders' paths, e.g. /tmp/...: not ours)
    build_paths = [str(p).encode() for p in (source_root(), StageCache().root, sys.prefix)]
    for dirpath, _dirs, files in os.walk(usr / "lib/keel"):
        for name in files:
            path = Path(dirpath, name)
            if path.is_symlink():
                continue
            data = path.read_bytes()
            for bad in build_paths:
                assert bad not in data, f"{path.relative_to(usr)} contains {bad.decode()}"


def test_second_build_is_byte_identical(py_built, tmp_path: Path):
    """Every stage after rootfs rebuilt twice from empty caches (same wheels) gives equal disks."""
    shared = StageCache()
    rootfs_key = py_built.manifest["stages"]["rootfs"]
    digests = []
    for i in (1, 2):
        cache = StageCache(tmp_path / f"cache{i}")
        (cache.root / "stages" / "rootfs").mkdir(parents=True)
        os.symlink(shared.path("rootfs", rootfs_key), cache.path("rootfs", rootfs_key))
        # the downloaded wheels and the build backends' venv, like the .deb cache
        for shared_dir in ("wheels", "python-build"):
            os.symlink(shared.root / shared_dir, cache.root / shared_dir)
        image = build(
            DEFINITION,
            out_dir=tmp_path / f"out{i}",
            progress=False,
            cache=cache,
            extra_plugins=COMPONENTS,
        )
        assert image.manifest["stages"] == py_built.manifest["stages"]
        digests.append(
            {
                name: hashlib.sha256((image.directory / name).read_bytes()).hexdigest()
                for name in ("disk.raw", "disk.qcow2")
            }
        )
    assert digests[0] == digests[1]


def test_a_pin_without_a_wheel_names_it_who_needs_it_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """pip finds no wheel at the pin: the error says which and why it is there.

    Offline: pip's "index" is the shared wheel cache, which has every other pin."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(StageCache().root / "wheels"))
    plan = pydists.plan(recipe.load(DEFINITION, extra_plugins=components_on("store")))
    pins = plan.constraints.read_text().replace(
        "sortedcontainers==2.4.0", "sortedcontainers==0.0.1"
    )
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(pins)
    bad = dataclasses.replace(plan, constraints=constraints)
    with pytest.raises(BuildError) as err:
        pylayers.deps_layer(bad, StageCache(tmp_path / "cache"))
    text = str(err.value)
    assert "no cp311 manylinux x86_64 wheel of sortedcontainers==0.0.1 that fits" in text
    assert "required by keel-store" in text
    assert "'store'" in text
    assert f"pin a version of sortedcontainers that has such a wheel in {constraints}" in text
    assert not list((tmp_path / "cache/image/stages/pydeps").iterdir())  # nothing half-made
