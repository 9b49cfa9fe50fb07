"""Fixtures for keel-core tests: real plugin modules written to disk and found by entry points."""

from __future__ import annotations

import importlib.metadata as md
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keel_core import plugins


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path where tests write plugin modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fakeplugin_")]:
        del sys.modules[name]


@pytest.fixture
def entry_points(
    plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[dict[str, str]], None]:
    """Replace installed entry points with ``{name: module source}`` written to plugin_dir.

    The modules are imported for real by :func:`keel_core.plugins.load`, as an
    installed plugin would be.
    """

    def install(sources: dict[str, str]) -> None:
        eps = []
        for name, source in sources.items():
            module = f"fakeplugin_{name}"
            (plugin_dir / f"{module}.py").write_text(textwrap.dedent(source))
            eps.append(md.EntryPoint(name=name, value=module, group="keel"))
        monkeypatch.setattr(plugins, "_entry_points", lambda: sorted(eps, key=lambda e: e.name))

    return install
