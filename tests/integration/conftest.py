"""Fixtures shared by the VM tests of several components."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from keel_image.testing import components_on


@pytest.fixture(scope="session")
def py_image(keel_image_variant: Callable[..., Path]) -> Path:
    """The default definition with components [store, supervisor] (Python in /usr, both
    daemons enabled): built once per session, or reused by content hash."""
    return keel_image_variant(components_on("store", "supervisor"))
