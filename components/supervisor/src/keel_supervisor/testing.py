"""Helpers for tests of the supervisor and of code that runs containers (a small test kit).

``make_busybox_rootfs`` builds a one-layer image from Debian's busybox-static, enough to
run shells, ``httpd`` and ``nc`` in real containers without an image registry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from keel_supervisor.model import ContainerConfig

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
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def busybox(rootfs: Path, *command: str, **settings: object) -> ContainerConfig:
    """A container of the busybox fixture running ``command``."""
    return ContainerConfig.model_validate(
        {
            "image": str(rootfs),
            "rootfs": True,
            "command": list(command),
            "network": "none",
            **settings,
        }
    )
