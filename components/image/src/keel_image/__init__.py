"""Keel image builder: image definition to bootable disk with A/B verity /usr."""
