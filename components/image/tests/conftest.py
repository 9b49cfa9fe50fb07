"""Shared helpers for keel-image's unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

DEFINITION = """\
name: test
version: 1.0.0
platforms: [qemu]
partitions:
  usr: 128
"""


@pytest.fixture
def definition(tmp_path: Path) -> Path:
    """A small valid image definition."""
    path = tmp_path / "test.yaml"
    path.write_text(DEFINITION)
    return path
