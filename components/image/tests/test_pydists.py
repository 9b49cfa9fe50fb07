"""Which Python distributions an image gets, their cache keys, wrappers and library check."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keel_core import hookimpl
from keel_core.types import ImageContribution
from keel_image import pydists, pylayers, recipe
from keel_image.errors import BuildError

ROOT = Path(__file__).resolve().parents[3]


class Wants:
    """A test plugin whose contribution asks for Python distributions."""

    def __init__(self, name: str, *dists: str) -> None:
        self.name, self.dists = name, dists

    @hookimpl
    def keel_image_contribution(self, image):
        return ImageContribution(name=self.name, python_distributions=list(self.dists))


def _recipe(definition: Path, *dists: str, name: str = "wants") -> recipe.Recipe:
    return recipe.load(definition, extra_plugins=[(name, Wants(name, *dists))])


def test_no_python_distributions_no_plan_and_no_python3(definition: Path):
    r = recipe.load(definition)
    assert pydists.plan(r).empty
    assert "python3" not in r.packages


def test_store_pulls_core_and_third_party_deps_pinned_elsewhere(definition: Path):
    r = _recipe(definition, "keel_store")  # normalized: keel_store is keel-store
    plan = pydists.plan(r, ROOT)
    assert [d.name for d in plan.keel] == ["keel-core", "keel-store"]
    names = [pydists.requirement_name(req) for req in plan.requirements]
    assert names == sorted(names)
    assert {"grpcio", "protobuf", "pluggy", "pydantic"} <= set(names)
    assert not any(n.startswith("keel-") for n in names)
    assert plan.constraints == ROOT / "constraints.txt"
    assert {"python3", "libstdc++6"} <= set(r.packages)
    store = next(d for d in plan.keel if d.name == "keel-store")
    assert ("keel-store", "keel_store.daemon:main") in store.scripts


def test_unknown_distribution_names_it_the_contribution_and_the_fix(definition: Path):
    r = _recipe(definition, "requests", name="my-component")
    with pytest.raises(BuildError) as err:
        pydists.plan(r, ROOT)
    text = str(err.value)
    assert "'my-component'" in text
    assert "'requests'" in text
    assert "not a Keel distribution" in text
    assert "keel-store" in text  # the known ones are listed
    assert "pyproject dependencies" in text


def test_keel_key_follows_the_source_and_ignores_caches(tmp_path: Path, definition: Path):
    tree = tmp_path / "src"
    shutil.copytree(ROOT / "components" / "core", tree / "components" / "core",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # fmt: skip
    (tree / "constraints.txt").write_text((ROOT / "constraints.txt").read_text())
    r = _recipe(definition, "keel-core")
    key = pydists.plan(r, tree).keel_key()
    deps = pydists.plan(r, tree).deps_key()
    cache = tree / "components/core/src/keel_core/__pycache__"
    cache.mkdir()
    (cache / "cli.cpython-311.pyc").write_bytes(b"junk")
    assert pydists.plan(r, tree).keel_key() == key
    cli = tree / "components/core/src/keel_core/cli.py"
    cli.write_text(cli.read_text() + "\n# changed\n")
    assert pydists.plan(r, tree).keel_key() != key
    assert pydists.plan(r, tree).deps_key() == deps
    (tree / "constraints.txt").write_text("pluggy==1.0.0\n")
    assert pydists.plan(r, tree).deps_key() != deps


def test_wrapper_runs_the_entry_point(tmp_path: Path):
    text = pylayers.wrapper("keel", "keel-core", "keel_core.cli:main").decode()
    assert text.startswith("#!/usr/bin/python3 -I\n")
    script = tmp_path / "keel"
    script.write_text(text.split("\n", 1)[1])
    out = subprocess.run(
        [sys.executable, script, "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("keel, version ")


def test_missing_shared_library_is_a_clear_error(tmp_path: Path):
    spec = importlib.util.find_spec("grpc._cython.cygrpc")
    if spec is None or not spec.origin or shutil.which("readelf") is None:
        pytest.skip("needs grpcio and readelf on the host")
    site = tmp_path / "tree" / pylayers.PREFIX.lstrip("/")
    (site / "grpc").mkdir(parents=True)
    shutil.copy(spec.origin, site / "grpc")
    lib = tmp_path / "tree/usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    for name in ("libc.so.6", "libm.so.6", "libpthread.so.0", "libgcc_s.so.1", "libdl.so.2",
                 "librt.so.1", "ld-linux-x86-64.so.2"):  # fmt: skip
        (lib / name).write_bytes(b"")
    with pytest.raises(BuildError) as err:
        pylayers._check_libraries(tmp_path / "tree", site, "system")
    assert "libstdc++.so.6 (needed by grpc/" in str(err.value)
    assert "libstdc++6" in str(err.value)
    (lib / "libstdc++.so.6").write_bytes(b"")
    pylayers._check_libraries(tmp_path / "tree", site, "system")
