"""Fixtures for the image build tests: the default image, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DEFINITION = ROOT / "images" / "keel.yaml"


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory):
    """The default image (shared stage cache; a fresh output directory)."""
    from keel_image import build

    return build(DEFINITION, out_dir=tmp_path_factory.mktemp("out"), progress=False)
