"""Keel's hook specifications: the one place that says how plugins extend Keel.

Keel uses `pluggy <https://pluggy.readthedocs.io>`_ with the project name ``keel``.
A plugin is a module (or object) with functions decorated by :data:`hookimpl`, published
through the ``keel`` entry-point group of its distribution::

    [project.entry-points.keel]
    example = "keel_platform_example.plugin"

Keel's own components (store, supervisor, image, ...) are plugins exactly like a third
party's, and can be switched off the same way (``KEEL_DISABLE_PLUGINS=store``).

Every hook here returns a value that is collected from all plugins (a list, in plugin
registration order reversed, as pluggy does); none is ``firstresult``, because each
of them is naturally answered by many plugins at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from keel_core.schemas import ImageDefinition
    from keel_core.types import ContainerRuntime, HealthCheck, ImageContribution, Platform

PROJECT = "keel"
"""pluggy project name and entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def keel_image_contribution(image: ImageDefinition) -> ImageContribution | None:
    """Say what this plugin adds to ``image``: packages, files, units, kernel arguments.

    Called by the image builder once per build, for every loaded plugin. ``image`` is
    the validated image definition (``images/keel.yaml``); a component that is not in
    ``image.components`` should return ``None``. The builder records every
    contribution, by name, in the image manifest, and includes the contributions in
    the hash that decides whether a cached stage can be reused, so the result must be
    deterministic.

    Implemented by: components (the store adds its daemon and unit), platforms.
    """


@hookspec
def keel_platforms() -> Sequence[Platform]:  # type: ignore[empty-body]
    """Return the platforms this plugin provides.

    A platform names the output formats it makes from the raw disk, its kernel
    arguments and modules, and how the harness emulates it under QEMU. Names must be
    unique across all plugins; a clash is an error that names both plugins.

    Implemented by: ``platforms/*`` packages and third-party platform plugins.
    """


@hookspec
def keel_container_runtimes() -> Sequence[ContainerRuntime]:  # type: ignore[empty-body]
    """Return OCI runtimes (runc, crun, ...) the supervisor may use.

    The supervisor picks the available runtime with the highest priority, unless the
    user names one.

    Implemented by: the supervisor (runc, crun, lxc) and third parties.
    """


@hookspec
def keel_health_checks() -> Sequence[HealthCheck]:  # type: ignore[empty-body]
    """Return checks that must pass before a boot is marked good.

    The same checks run on every machine the harness boots, after its built-in gate
    (no failed units, /usr read-only, ...). Checks run on the machine as root.

    Implemented by: components (the store checks its own health), platforms, third
    parties.
    """


@hookspec
def keel_cli(cli: click.Group) -> None:
    """Add subcommands to the ``keel`` command-line tool.

    ``cli`` is the root :class:`click.Group`; add commands or groups with
    ``cli.add_command(...)``. Command names must be unique.

    Implemented by: every component that has a command (``keel build``, ``keel slot``).
    """
