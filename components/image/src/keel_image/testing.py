"""Helpers for tests and benchmarks: turn components on in a variant of a definition.

``keel_image_variant(components_on("store", "supervisor"))`` (harness fixture) or
``build(definition, extra_plugins=components_on(...))`` builds the definition as if its
``components`` listed those names, without a second definition file.
"""

from __future__ import annotations

from keel_core import plugins
from keel_core.hookspecs import hookimpl
from keel_core.schemas import ImageDefinition
from keel_core.types import ImageContribution


class ComponentOn:
    """Answers ``keel_image_contribution`` with one component's own contribution.

    The default definition has ``components: []``; this asks the component's plugin as if
    the definition listed it, so the variant gets exactly what a definition with
    ``components: [name]`` gets.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def keel_image_contribution(self, image: ImageDefinition) -> ImageContribution | None:
        """The component's contribution for ``image`` with the component turned on."""
        if self.name in image.components:
            return None  # the component answers for itself
        plugin = plugins.load().get_plugin(self.name)
        assert plugin is not None, f"component {self.name!r} is not installed"
        wanted = image.model_copy(update={"components": [*image.components, self.name]})
        contribution: ImageContribution | None = plugin.keel_image_contribution(image=wanted)
        return contribution


def components_on(*names: str) -> list[tuple[str, object]]:
    """Extra plugins for ``keel_image_variant`` / ``build(extra_plugins=...)``."""
    return [(f"test-{name}-on", ComponentOn(name)) for name in names]
