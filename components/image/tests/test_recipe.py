"""Definitions load with precise errors; plugins' contributions merge deterministically."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_core import hookimpl
from keel_core.errors import ConfigError
from keel_core.types import FileContribution, ImageContribution
from keel_image import pipeline, recipe
from keel_image.cache import StageCache
from keel_image.errors import BuildError
from keel_image.pipeline import build


class Extra:
    """A test plugin contributing a package, a file and a module."""

    def __init__(self, name: str = "extra", path: str = "/usr/lib/extra.conf") -> None:
        self.name, self.path = name, path

    @hookimpl
    def keel_image_contribution(self, image):
        return ImageContribution(
            name=self.name,
            packages=["zstd"],
            files=[FileContribution(self.path, b"x=1\n")],
            kernel_modules=["loop"],
        )


def test_default_definition_loads_with_base_and_qemu_contributions():
    root = Path(__file__).resolve().parents[3]
    r = recipe.load(root / "images" / "keel.yaml")
    names = [c.name for c in r.contributions]
    assert "keel-base" in names
    assert "platform-qemu" in names
    assert [p.name for p in r.platforms] == ["qemu"]
    assert "openssh-server" in r.packages
    assert "linux-image-cloud-amd64" in r.packages
    assert "console=ttyS0,115200" in r.kernel_args
    assert "qemu_fw_cfg" in r.kernel_modules


def test_extra_plugin_changes_the_contributions_digest(definition: Path):
    plain = recipe.load(definition)
    extra = recipe.load(definition, extra_plugins=[("extra", Extra())])
    assert "zstd" in extra.packages
    assert "zstd" not in plain.packages
    assert "loop" in extra.kernel_modules
    assert plain.contributions_digest() != extra.contributions_digest()
    assert recipe.load(definition).contributions_digest() == plain.contributions_digest()


def test_a_variant_builds_into_its_own_output_directory(definition: Path, tmp_path: Path):
    """A test variant must never overwrite the plain image that other tests boot."""
    plain = recipe.load(definition)
    extra = recipe.load(definition, extra_plugins=[("extra", Extra())])
    other = recipe.load(definition, extra_plugins=[("other", Extra("other", "/etc/other"))])
    name = f"{plain.definition.name}-{plain.definition.version}"
    assert pipeline._out_dir(plain, tmp_path) == tmp_path / name
    assert pipeline._out_dir(extra, tmp_path) == tmp_path / f"{name}+{extra.variant}"
    assert len(extra.variant) == 12
    assert extra.variant != other.variant
    assert recipe.load(definition, extra_plugins=[("extra", Extra())]).variant == extra.variant


def test_two_plugins_writing_one_path_is_an_error(definition: Path):
    r = recipe.load(
        definition,
        extra_plugins=[("a", Extra("a", "/etc/x")), ("b", Extra("b", "/etc/x"))],
    )
    with pytest.raises(ConfigError, match="/etc/x is contributed by both 'a' and 'b'"):
        _ = r.files


def test_unknown_key_names_file_line_and_suggestion(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nversion: 1\npackagez: [vim]\n")
    with pytest.raises(ConfigError) as err:
        recipe.load(path)
    assert f"{path}:3:1: packagez: unknown key 'packagez'; did you mean 'packages'?" in str(
        err.value
    )


def test_unknown_platform_points_at_the_list_item(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nversion: '1'\nplatforms:\n  - qemu\n  - amiga\n")
    with pytest.raises(ConfigError) as err:
        recipe.load(path)
    assert f"{path}:5:5: platforms[1]: unknown platform 'amiga'; known: " in str(err.value)


def test_bad_partition_size_is_reported_with_its_key(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nversion: '1'\npartitions:\n  usr: 8\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml:4:8: partitions.usr: .*greater than or equal to 64"
    ):
        recipe.load(path)


def test_platform_not_in_definition_is_refused_before_building(definition: Path, tmp_path: Path):
    with pytest.raises(BuildError, match="platform\\(s\\) vmware not in the definition"):
        build(
            definition,
            out_dir=tmp_path,
            progress=False,
            platforms=["vmware"],
            cache=StageCache(tmp_path / "cache"),
        )
    assert not (tmp_path / "test-1.0.0").exists()
