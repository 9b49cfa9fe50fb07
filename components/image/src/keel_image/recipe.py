"""Everything one build needs: the image definition plus what plugins contribute.

Plugins answer ``keel_image_contribution(image)`` and ``keel_platforms()``; the recipe
merges their answers (sorted, so the order plugins load in does not change the image)
and checks that the platforms the definition asks for exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from keel_core import plugins
from keel_core.config import load_file
from keel_core.errors import ConfigError, ConfigProblem
from keel_core.schemas import ImageDefinition
from keel_core.types import FileContribution, ImageContribution, Platform
from keel_image.cache import digest, file_digest


@dataclass(frozen=True)
class Recipe:
    """A validated definition with the plugins' contributions merged in."""

    definition: ImageDefinition
    path: Path
    contributions: tuple[ImageContribution, ...]
    platforms: tuple[Platform, ...]
    variant: str = ""
    """Empty for the definition as it stands; a short hash when extra plugins changed it."""

    @property
    def output_name(self) -> str:
        """``<name>-<version>``, plus ``+<variant>`` for a variant: never the plain image's."""
        base = f"{self.definition.name}-{self.definition.version}"
        return f"{base}+{self.variant}" if self.variant else base

    @property
    def packages(self) -> list[str]:
        """Debian packages: the definition's, the kernel, every contribution's, platforms'."""
        names = {*self.definition.packages, self.definition.kernel}
        for c in self.contributions:
            names.update(c.packages)
        for p in self.platforms:
            names.update(p.packages)
        if any(c.python_distributions for c in self.contributions):
            # python3 runs the distributions installed in /usr/lib/keel/python; manylinux
            # wheels (grpcio, ...) link the system's libstdc++ (PEP 599's allowed libraries).
            names.update(("python3", "libstdc++6"))
        return sorted(names)

    @property
    def kernel_args(self) -> list[str]:
        """Kernel arguments in a stable order: platforms, contributions, then the definition."""
        out: list[str] = []
        for p in self.platforms:
            out += p.kernel_args
        for c in self.contributions:
            out += c.kernel_args
        out += self.definition.kernel_args
        return list(dict.fromkeys(out))

    @property
    def kernel_modules(self) -> list[str]:
        """Modules that stay in /usr after pruning."""
        names: set[str] = set()
        for c in self.contributions:
            names.update(c.kernel_modules)
        for p in self.platforms:
            names.update(p.kernel_modules)
        return sorted(names)

    @property
    def files(self) -> list[tuple[str, FileContribution]]:
        """(contributor, file) pairs sorted by path; two contributors of one path is an error."""
        seen: dict[str, str] = {}
        out: list[tuple[str, FileContribution]] = []
        for c in self.contributions:
            for f in c.files:
                if f.path in seen:
                    raise ConfigError(
                        [
                            ConfigProblem(
                                str(self.path),
                                1,
                                1,
                                "components",
                                f"{f.path} is contributed by both {seen[f.path]!r} and {c.name!r}",
                            )
                        ]
                    )
                seen[f.path] = c.name
                out.append((c.name, f))
        return sorted(out, key=lambda item: item[1].path)

    def contributions_digest(self) -> str:
        """Hash of every contribution, file contents included: part of the cache keys."""
        parts = []
        for c in self.contributions:
            files = [
                (
                    f.path,
                    f.mode,
                    f.owner,
                    f.group,
                    digest(f.content.hex())
                    if f.content is not None
                    else file_digest(Path(f.source or "")),
                )
                for f in c.files
            ]
            parts.append(
                (
                    c.name,
                    sorted(c.packages),
                    files,
                    list(c.units),
                    list(c.disabled_units),
                    list(c.kernel_args),
                    sorted(c.kernel_modules),
                    list(c.sysusers),
                    list(c.python_distributions),
                )
            )
        plats = [
            (p.name, list(p.kernel_args), sorted(p.kernel_modules), sorted(p.packages))
            for p in self.platforms
        ]
        return digest(parts, plats)


def _line_of(path: Path, key: str, index: int | None = None) -> tuple[int, int]:
    """Line and column of a top-level key (or one of its list items) in a YAML file."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return 1, 1
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            if k.value == key:
                node = (
                    v.value[index]
                    if index is not None
                    and isinstance(v, yaml.SequenceNode)
                    and index < len(v.value)
                    else k
                )
                return node.start_mark.line + 1, node.start_mark.column + 1
    return 1, 1


def locate(path: Path, key: str, index: int | None, message: str) -> ConfigError:
    """A :class:`ConfigError` pointing at ``key`` (or its ``index``-th item) in ``path``."""
    line, col = _line_of(path, key, index)
    dotted = key if index is None else f"{key}[{index}]"
    return ConfigError([ConfigProblem(str(path), line, col, dotted, message)])


def load(path: str | Path, *, extra_plugins: Sequence[tuple[str, object]] = ()) -> Recipe:
    """Load ``path``, ask every plugin (and ``extra_plugins``) for its contribution."""
    path = Path(path).resolve()
    definition = load_file(path, ImageDefinition)
    pm = plugins.load(extra=extra_plugins)
    found: list[Platform] = plugins.collect(pm.hook.keel_platforms())
    by_name = {p.name: p for p in found}
    chosen: list[Platform] = []
    for i, name in enumerate(definition.platforms):
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none (is keel-platform-qemu installed?)"
            raise locate(path, "platforms", i, f"unknown platform {name!r}; known: {known}")
        chosen.append(by_name[name])
    results: Iterable[ImageContribution | None] = pm.hook.keel_image_contribution(image=definition)
    contributions = sorted((c for c in results if c is not None), key=lambda c: c.name)
    names = [c.name for c in contributions]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise locate(path, "components", None, f"two plugins contribute as {', '.join(dupes)}")
    recipe = Recipe(definition, path, tuple(contributions), tuple(chosen))
    if extra_plugins:  # a test variant is another image: it must not overwrite the plain one
        recipe = replace(recipe, variant=recipe.contributions_digest()[:12])
    return recipe
