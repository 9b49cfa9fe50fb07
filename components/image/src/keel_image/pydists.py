"""Which Python distributions an image needs: Keel's own (from this source tree) and PyPI's.

Contributions name Keel distributions (``python_distributions=["keel-store"]``). This
module finds them in the source tree (every ``pyproject.toml`` under ``components/`` and
``platforms/``), follows their dependencies to every Keel distribution they need (always
``keel-core``), and collects the third-party requirements, which the repository's
``constraints.txt`` pins. A name that is no Keel distribution is an error naming the
contribution that asked for it.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from keel_image.cache import digest, file_digest
from keel_image.errors import BuildError
from keel_image.recipe import Recipe

STAGE = "python"

SKIP_DIRS = {"__pycache__", "tests", ".mypy_cache", ".ruff_cache", ".pytest_cache", "dist", "build"}
"""Directories of a component that never reach a wheel (or are rebuilt by its build hook)."""


def normalize(name: str) -> str:
    """PEP 503 name: ``Keel_Store`` and ``keel.store`` are ``keel-store``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution a PEP 508 requirement names (``aetcd>=1.0`` -> ``aetcd``)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not m:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize(m.group(1))


@dataclass(frozen=True)
class KeelDistribution:
    """One Keel distribution in the source tree."""

    name: str
    root: Path
    requires: tuple[str, ...]
    """``[project].dependencies``, as written."""
    build_requires: tuple[str, ...]
    scripts: tuple[tuple[str, str], ...]
    """``[project.scripts]``: (command, ``module:function``)."""

    def source_digest(self) -> str:
        """Hash of every file a wheel of this distribution is built from (paths and bytes)."""
        files: list[tuple[str, str]] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(
                d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
            )
            if Path(dirpath).name == "_generated":  # made by the build hook from the sources
                dirnames[:] = []
                continue
            for name in sorted(filenames):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = Path(dirpath, name)
                files.append((str(path.relative_to(self.root)), file_digest(path)))
        return digest(self.name, files)


def source_root() -> Path:
    """The Keel source tree this builder runs from (``$KEEL_SOURCE_DIR`` overrides)."""
    if env := os.environ.get("KEEL_SOURCE_DIR"):
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / "constraints.txt").is_file() and (parent / "components").is_dir():
            return parent
    raise BuildError(
        STAGE,
        f"no Keel source tree (constraints.txt, components/) above {__file__}",
        "install keel-image from a Keel checkout (pip install -e components/image) "
        "or set KEEL_SOURCE_DIR to one",
    )


def discover(root: Path) -> dict[str, KeelDistribution]:
    """Every Keel distribution under ``root``'s ``components/`` and ``platforms/``."""
    found: dict[str, KeelDistribution] = {}
    for pyproject in sorted(
        [*root.glob("components/*/pyproject.toml"), *root.glob("platforms/*/pyproject.toml")]
    ):
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        project = data.get("project", {})
        if "name" not in project:
            continue
        dist = KeelDistribution(
            name=normalize(project["name"]),
            root=pyproject.parent,
            requires=tuple(project.get("dependencies", [])),
            build_requires=tuple(data.get("build-system", {}).get("requires", [])),
            scripts=tuple(sorted(project.get("scripts", {}).items())),
        )
        found[dist.name] = dist
    return found


@dataclass(frozen=True)
class PythonPlan:
    """What to install: Keel distributions (built here) and third-party requirements."""

    keel: tuple[KeelDistribution, ...]
    """Sorted by name; the closure of what contributions asked for."""
    requirements: tuple[str, ...]
    """Third-party requirements of those distributions, sorted, as written."""
    constraints: Path
    asked: tuple[tuple[str, str], ...] = ()
    """(contribution, Keel distribution) pairs as the contributions asked."""
    required_by: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Third-party name -> the Keel distributions that list it."""

    def who_needs(self, name: str) -> str:
        """``keel-store (asked for by 'store')`` for a third-party distribution ``name``."""
        dists = dict(self.required_by).get(normalize(name), ())
        if not dists:
            return "a dependency of another requirement"
        direct = {c for c, d in self.asked if d in dists}
        contributions = sorted(direct or {c for c, _ in self.asked})  # keel-core: everyone's
        return (
            f"required by {', '.join(dists)}; the image has it for contribution(s) "
            f"{', '.join(repr(c) for c in contributions)}"
        )

    @property
    def empty(self) -> bool:
        """True when no contribution asked for Python distributions."""
        return not self.keel

    def deps_key(self) -> str:
        """Cache key of the third-party layer: requirements and the pins."""
        return digest("pydeps", self.requirements, file_digest(self.constraints))

    def keel_key(self) -> str:
        """Cache key of the Keel layer: the sources of every Keel distribution in it."""
        return digest(
            "pykeel",
            [(d.name, d.source_digest()) for d in self.keel],
            file_digest(self.constraints),
        )


def plan(recipe: Recipe, root: Path | None = None) -> PythonPlan:
    """The Python distributions ``recipe``'s contributions need, with their closure."""
    wanted = [(c.name, normalize(n)) for c in recipe.contributions for n in c.python_distributions]
    if not wanted:
        return PythonPlan((), (), Path("/dev/null"))
    root = root or source_root()
    known = discover(root)
    for contributor, name in wanted:
        if name not in known:
            raise BuildError(
                STAGE,
                f"contribution {contributor!r} asks for Python distribution {name!r}, "
                f"which is not a Keel distribution in {root} "
                f"(known: {', '.join(sorted(known))})",
                f"fix python_distributions in {contributor!r}'s keel_image_contribution; "
                "third-party packages belong in that distribution's pyproject dependencies",
            )
    todo = ["keel-core", *(n for _, n in wanted)]
    chosen: dict[str, KeelDistribution] = {}
    third: set[str] = set()
    users: dict[str, set[str]] = {}
    while todo:
        name = todo.pop()
        if name in chosen:
            continue
        if name not in known:
            raise BuildError(STAGE, f"Keel distribution {name!r} is missing from {root}", "")
        dist = chosen[name] = known[name]
        for req in dist.requires:
            dep = requirement_name(req)
            if dep in known:
                todo.append(dep)
            else:
                third.add(req.strip())
                users.setdefault(dep, set()).add(name)
    constraints = root / "constraints.txt"
    if not constraints.is_file():
        raise BuildError(STAGE, f"{constraints} is missing", "restore the repository's pins")
    return PythonPlan(
        tuple(chosen[n] for n in sorted(chosen)),
        tuple(sorted(third, key=lambda r: (requirement_name(r), r))),
        constraints,
        asked=tuple(sorted(set(wanted))),
        required_by=tuple((n, tuple(sorted(u))) for n, u in sorted(users.items())),
    )
