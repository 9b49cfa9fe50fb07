"""Kernel modules: resolve names to files with their dependencies, prune the rest.

Debian's kernel ships ~90 MB of modules; an image keeps only what its platforms and
components ask for (``kernel_modules`` in their contributions), plus dependencies,
read from the kernel's own ``modules.dep``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from keel_image.errors import BuildError


def _name(relpath: str) -> str:
    base = relpath.rsplit("/", 1)[-1]
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base.replace("-", "_")


def module_name(relpath: str) -> str:
    """The module name of a module file (``kernel/drivers/md/dm-mod.ko`` -> ``dm_mod``)."""
    return _name(relpath)


class ModuleIndex:
    """The modules of one kernel (``lib/modules/<version>`` of a root tree)."""

    def __init__(self, moddir: Path) -> None:
        self.moddir = moddir
        self.path_of: dict[str, str] = {}
        self.deps_of: dict[str, list[str]] = {}
        builtin = moddir / "modules.builtin"
        self.builtin = (
            {_name(line.strip()) for line in builtin.read_text().splitlines() if line.strip()}
            if builtin.exists()
            else set()
        )
        for line in (moddir / "modules.dep").read_text().splitlines():
            if ":" not in line:
                continue
            path, _, deps = line.partition(":")
            name = _name(path)
            self.path_of[name] = path
            self.deps_of[name] = [_name(d) for d in deps.split()]

    def closure(self, names: Iterable[str], *, stage: str, optional: bool = False) -> list[str]:
        """Module files (relative paths) for ``names`` and their dependencies, in load order.

        Built-in modules are skipped; an unknown name is an error, unless ``optional``
        (then it is skipped: a driver this kernel flavour does not have).
        """
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            for dep in reversed(self.deps_of[name]):  # modules.dep lists the deepest last
                visit(dep)
            order.append(self.path_of[name])

        for raw in sorted(set(names)):
            name = raw.replace("-", "_")
            if name in self.builtin:
                continue
            if name not in self.path_of:
                if optional:
                    continue
                raise BuildError(
                    stage,
                    f"kernel module {raw!r} is neither a module nor built into this kernel",
                    "check the module name (modinfo NAME on a Debian machine with this kernel)",
                )
            visit(name)
        return order

    def prune(self, keep: Iterable[str]) -> tuple[int, int]:
        """Delete every module file not in ``keep``; returns (kept, removed) counts."""
        wanted = set(keep)
        kept = removed = 0
        for rel in self.path_of.values():
            if rel in wanted:
                kept += 1
            else:
                (self.moddir / rel).unlink(missing_ok=True)
                removed += 1
        for dirpath, dirnames, filenames in os.walk(self.moddir / "kernel", topdown=False):
            if (not dirnames and not filenames) or not os.listdir(dirpath):
                Path(dirpath).rmdir()
        return kept, removed
