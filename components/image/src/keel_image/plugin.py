"""The keel_image plugin: the base image contribution and the ``keel build`` command."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from keel_core import hookimpl
from keel_core.types import ImageContribution
from keel_image import base
from keel_image.cli import build_command

if TYPE_CHECKING:
    from keel_core.schemas import ImageDefinition  # pydantic: not for every `keel` command


@hookimpl
def keel_image_contribution(image: ImageDefinition) -> ImageContribution:
    """Every image gets the base system (systemd, SSH, the core user, ``keel slot``)."""
    return base.contribution(image)


@hookimpl
def keel_cli(cli: click.Group) -> None:
    """Add ``keel build``."""
    cli.add_command(build_command)
