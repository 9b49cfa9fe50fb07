"""Keel image builder: image definition to bootable disk with A/B verity /usr.

>>> from keel_image import build
>>> image = build("images/keel.yaml")            # doctest: +SKIP
>>> image.disk_qcow2, image.manifest["usr"]["verity"]["root_hash"]   # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel_image.pipeline import BuiltImage, build

__all__ = ["BuiltImage", "build"]


def __getattr__(name: str) -> Any:
    """``build`` and ``BuiltImage`` load the pipeline on first use: every ``keel`` command
    imports this package (its plugin), and the pipeline's imports take about a second."""
    if name in __all__:
        from keel_image import pipeline  # noqa: PLC0415

        return getattr(pipeline, name)
    raise AttributeError(f"module 'keel_image' has no attribute {name!r}")
