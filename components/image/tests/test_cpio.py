"""The initramfs archive is a valid, reproducible newc cpio (checked with real cpio)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from keel_image.initramfs import Cpio


def _archive(mtime: int = 1700000000) -> bytes:
    a = Cpio(mtime)
    a.file("bin/busybox", b"\x7fELF fake", 0o755)
    a.file("init", b"#!/bin/sh\necho hi\n", 0o755)
    a.symlink("bin/sh", "busybox")
    a.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    a.dir("dev")
    return a.bytes()


def test_cpio_lists_and_extracts_what_was_added(tmp_path: Path):
    data = _archive()
    listing = subprocess.run(
        ["cpio", "-t", "-v"], input=data, capture_output=True, check=True
    ).stdout.decode()
    names = [
        line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.splitlines()
    ]
    assert names == ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "init"]
    subprocess.run(
        ["cpio", "-i", "-d", "-m", "--no-absolute-filenames", "--quiet"],
        input=data,
        cwd=tmp_path,
        check=True,
    )
    assert (tmp_path / "init").read_text() == "#!/bin/sh\necho hi\n"
    assert (tmp_path / "init").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "init").stat().st_mtime == 1700000000
    assert (tmp_path / "bin/sh").readlink() == Path("busybox")


def test_cpio_is_reproducible_and_depends_on_its_inputs():
    assert _archive() == _archive()
    assert _archive(1) != _archive(2)
