"""Hatch build hook: compile etcd's protos into ``keel_store/_generated`` at build time.

The generated package is git-ignored; wheels and editable installs both get it from
here. See :mod:`keel_store.protogen` for why and how.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ProtoBuildHook(BuildHookInterface):  # type: ignore[misc]
    """Runs :func:`keel_store.protogen.generate` before every build."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        src = Path(self.root) / "src"
        spec = importlib.util.spec_from_file_location(
            "_keel_protogen", src / "keel_store" / "protogen.py"
        )
        assert spec
        assert spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.generate(src)
