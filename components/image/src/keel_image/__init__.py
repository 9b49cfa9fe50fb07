"""Keel image builder: image definition to bootable disk with A/B verity /usr.

>>> from keel_image import build
>>> image = build("images/keel.yaml")            # doctest: +SKIP
>>> image.disk_qcow2, image.manifest["usr"]["verity"]["root_hash"]   # doctest: +SKIP
"""

from keel_image.pipeline import BuiltImage, build

__all__ = ["BuiltImage", "build"]
