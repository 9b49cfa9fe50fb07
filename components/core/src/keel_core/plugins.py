"""Find, load and guard Keel's plugins.

Plugins come from the ``keel`` entry-point group: Keel's own components and third-party
packages alike. Two environment variables change what happens:

``KEEL_DISABLE_PLUGINS=a,b``
    skip the plugins with these entry-point names (``store``, ``example``, ...).
``KEEL_TRACE_PLUGINS=1``
    print every hook call, its arguments and results to standard error.

A plugin that fails to import, implements a hook that does not exist, or raises inside
a hook produces a :class:`~keel_core.errors.PluginError` that names it.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from keel_core import hookspecs
from keel_core.errors import KeelError, PluginError

DISABLE_ENV = "KEEL_DISABLE_PLUGINS"
TRACE_ENV = "KEEL_TRACE_PLUGINS"


@dataclass
class PluginInfo:
    """What ``keel plugins`` shows about one loaded plugin."""

    name: str
    module: str
    distribution: str
    version: str
    location: str
    hooks: list[str] = field(default_factory=list)


class KeelPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.disabled: list[str] = []

    def register_plugin(self, plugin: object, info: PluginInfo) -> None:
        """Register ``plugin`` under ``info.name``, guarding its hooks with its name."""
        try:
            self.register(plugin, name=info.name)
        except ValueError as exc:  # name clash or double registration
            raise PluginError(info.name, str(exc)) from None
        except pluggy.PluginValidationError as exc:
            raise PluginError(info.name, f"invalid hook implementation: {exc}") from None
        callers = self.get_hookcallers(plugin) or []
        unknown = sorted(c.name for c in callers if not c.has_spec())
        if unknown:
            self.unregister(plugin)
            known = ", ".join(sorted(n for n in dir(self.hook) if n.startswith("keel_")))
            raise PluginError(
                info.name, f"implements unknown hook(s) {', '.join(unknown)}; known hooks: {known}"
            )
        for caller in callers:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    impl.function = _guarded(impl.function, info.name, caller.name)  # type: ignore[misc]
        info.hooks = sorted(c.name for c in callers)
        self.infos[info.name] = info


def _guarded(func: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeelError:
            raise
        except Exception as exc:
            raise PluginError(plugin, f"{hook} raised {type(exc).__name__}: {exc}") from exc

    return call


def disabled_names(environ: dict[str, str] | None = None) -> set[str]:
    """Entry-point names switched off through ``KEEL_DISABLE_PLUGINS``."""
    raw = (environ if environ is not None else os.environ).get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _entry_points() -> Iterable[md.EntryPoint]:
    return sorted(md.entry_points(group=hookspecs.PROJECT), key=lambda ep: ep.name)


def _info(ep: md.EntryPoint, plugin: object) -> PluginInfo:
    dist = ep.dist
    location = getattr(plugin, "__file__", None) or ep.value
    return PluginInfo(
        name=ep.name,
        module=ep.value,
        distribution=dist.metadata["Name"] if dist else "?",
        version=dist.version if dist else "?",
        location=str(location),
    )


def load(
    *, extra: Iterable[tuple[str, object]] = (), environ: dict[str, str] | None = None
) -> KeelPluginManager:
    """Build a plugin manager with every installed (and not disabled) plugin.

    ``extra`` registers further ``(name, plugin)`` pairs, e.g. from tests.
    """
    pm = KeelPluginManager()
    skip = disabled_names(environ)
    for ep in _entry_points():
        if ep.name in skip:
            pm.disabled.append(ep.name)
            continue
        if ep.name in pm.infos:
            other = pm.infos[ep.name].distribution
            dist = ep.dist.metadata["Name"] if ep.dist else "?"
            raise PluginError(ep.name, f"name is used by both {other} and {dist}")
        try:
            plugin = ep.load()
        except Exception as exc:
            dist = ep.dist.metadata["Name"] if ep.dist else "unknown distribution"
            raise PluginError(
                ep.name, f"failed to load {ep.value} (from {dist}): {type(exc).__name__}: {exc}"
            ) from exc
        pm.register_plugin(plugin, _info(ep, plugin))
    for name, plugin in extra:
        if name in skip:
            pm.disabled.append(name)
            continue
        module = getattr(plugin, "__name__", type(plugin).__name__)
        pm.register_plugin(
            plugin,
            PluginInfo(name, module, "(registered)", "-", getattr(plugin, "__file__", module)),
        )
    if (environ if environ is not None else os.environ).get(TRACE_ENV, "") not in ("", "0"):
        enable_tracing(pm)
    return pm


def enable_tracing(pm: pluggy.PluginManager, write: Callable[[str], object] | None = None) -> None:
    """Print each hook call and its result (``KEEL_TRACE_PLUGINS=1``)."""
    out = write or sys.stderr.write

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        names = ", ".join(i.plugin_name for i in impls)
        args = ", ".join(f"{key}={_short(value)}" for key, value in kwargs.items())
        out(f"keel-trace: call {hook_name}({args}) -> [{names}]\n")

    def after(
        outcome: pluggy.Result[Any],
        hook_name: str,
        impls: Sequence[pluggy.HookImpl],
        kwargs: Mapping[str, Any],
    ) -> None:
        exc = outcome.exception
        result = f"raised {exc!r}" if exc else _short(outcome.get_result())
        out(f"keel-trace: done {hook_name}: {result}\n")

    pm.add_hookcall_monitoring(before, after)


def _short(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def collect(results: Iterable[Iterable[Any] | None]) -> list[Any]:
    """Flatten the per-plugin lists a collecting hook returns."""
    return [item for result in results if result for item in result]
