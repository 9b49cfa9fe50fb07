"""Fixtures for the supervisor's tests: a busybox root filesystem and a supervisor on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")


def make_busybox_rootfs(target: Path) -> Path:
    """A one-layer image: static busybox, its applets as links, a passwd and group file."""
    (target / "bin").mkdir(parents=True)
    for name in ("etc", "tmp", "proc", "sys", "dev", "root", "www"):
        (target / name).mkdir()
    shutil.copy2(BUSYBOX, target / "bin/busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", target / "bin" / applet)
    (target / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (target / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (target / "www/index.html").write_text("hello from keel\n")
    return target


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only busybox layer shared by every test of the session."""
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


def wait_for(
    predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition"
) -> object:
    """Poll ``predicate`` until it returns something true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def host_root() -> None:
    """Skip unless we are root with runc (host tests)."""
    if os.geteuid() != 0 or shutil.which("runc") is None:
        pytest.skip("host tests need root and runc")
