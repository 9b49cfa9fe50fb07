"""Module closure follows modules.dep, skips built-ins, and names unknown modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_image.errors import BuildError
from keel_image.kmods import ModuleIndex


@pytest.fixture
def moddir(tmp_path: Path) -> Path:
    d = tmp_path / "6.1.0-test"
    files = {
        "kernel/drivers/md/dm-verity.ko": (
            "kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko"
        ),
        "kernel/drivers/md/dm-bufio.ko": "",
        "kernel/drivers/md/dm-mod.ko": "",
        "kernel/fs/erofs/erofs.ko": "kernel/lib/lz4_decompress.ko",
        "kernel/lib/lz4_decompress.ko": "",
        "kernel/net/unused.ko": "",
    }
    for rel in files:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(b"ko")
    (d / "modules.dep").write_text("".join(f"{k}: {v}\n" for k, v in files.items()))
    (d / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return d


def test_closure_loads_dependencies_first(moddir: Path):
    order = ModuleIndex(moddir).closure(["dm-verity", "erofs", "ext4"], stage="t")
    names = [p.rsplit("/", 1)[-1] for p in order]
    assert set(names) == {
        "dm-verity.ko",
        "dm-bufio.ko",
        "dm-mod.ko",
        "erofs.ko",
        "lz4_decompress.ko",
    }
    assert names.index("dm-mod.ko") < names.index("dm-verity.ko")
    assert names.index("dm-bufio.ko") < names.index("dm-verity.ko")
    assert names.index("lz4_decompress.ko") < names.index("erofs.ko")


def test_unknown_module_is_an_error_unless_optional(moddir: Path):
    index = ModuleIndex(moddir)
    with pytest.raises(BuildError, match="'ahci' is neither a module nor built into"):
        index.closure(["ahci"], stage="system")
    assert index.closure(["ahci", "erofs"], stage="t", optional=True)[-1].endswith("erofs.ko")


def test_prune_removes_everything_not_kept(moddir: Path):
    index = ModuleIndex(moddir)
    keep = index.closure(["erofs"], stage="t")
    kept, removed = index.prune(keep)
    assert (kept, removed) == (2, 4)
    assert (moddir / "kernel/fs/erofs/erofs.ko").exists()
    assert not (moddir / "kernel/net").exists()
    assert not (moddir / "kernel/drivers/md/dm-verity.ko").exists()
