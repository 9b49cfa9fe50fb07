"""Fixtures for the harness's self-tests: a Debian kernel and the busybox initramfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_harness import busybox
from keel_harness import kernel as kernel_mod

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def debian_kernel() -> kernel_mod.Kernel:
    """Debian's cloud kernel, downloaded once into the harness cache."""
    return kernel_mod.debian_kernel()


@pytest.fixture(scope="session")
def busybox_initrd(
    debian_kernel: kernel_mod.Kernel, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The busybox test guest's initramfs (built in well under a second)."""
    return busybox.build_initramfs(debian_kernel, tmp_path_factory.mktemp("bb") / "initrd.gz")
