"""Stage results appear only when complete; keys follow the inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_image.cache import StageCache, digest


def test_failed_stage_leaves_nothing_behind(tmp_path: Path):
    cache = StageCache(tmp_path)

    def half_written() -> None:
        with cache.produce("disk", "k1") as work:
            (work / "disk.raw").write_bytes(b"half")
            raise RuntimeError("mkfs failed")

    with pytest.raises(RuntimeError):
        half_written()
    assert cache.lookup("disk", "k1") is None
    assert list((tmp_path / "image/stages/disk").iterdir()) == []


def test_complete_stage_is_found_by_key(tmp_path: Path):
    cache = StageCache(tmp_path)
    with cache.produce("disk", "k1") as work:
        (work / "disk.raw").write_bytes(b"whole")
    hit = cache.lookup("disk", "k1")
    assert hit is not None
    assert (hit / "disk.raw").read_bytes() == b"whole"
    assert StageCache(tmp_path, enabled=False).lookup("disk", "k1") is None


def test_prune_keeps_the_most_recent(tmp_path: Path):
    cache = StageCache(tmp_path)
    for i in range(5):
        with cache.produce("s", f"k{i}"):
            pass
    cache.prune("s", keep=2)
    assert sorted(p.name for p in (tmp_path / "image/stages/s").iterdir()) == ["k3", "k4"]


def test_digest_is_order_independent_for_mappings_only():
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest(["a", "b"]) != digest(["b", "a"])
