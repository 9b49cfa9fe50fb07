"""Stage ``rootfs``: a Debian root tree from packages, with mmdebstrap.

The tree is cached by the package list, suite and sources. Downloaded .deb files are
kept in a shared cache and fed back to mmdebstrap, so a rebuild with a new package
list downloads only what is new. No apt, no docs, no initramfs generator end up in
the image.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from keel_image import tools
from keel_image.cache import StageCache, code_digest, digest
from keel_image.errors import BuildError
from keel_image.recipe import Recipe, locate

STAGE = "rootfs"
VERSION = 2
"""Bump when this stage's code changes what it produces."""

BASE_PACKAGES = ["usr-is-merged"]
"""Picked by name so that apt does not pull usrmerge (and perl) to satisfy usr-is-merged."""

EXCLUDES = [
    "/usr/share/man/*",
    "/usr/share/doc/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/bug/*",
    "/usr/share/bash-completion/*",
    "/usr/share/zsh/*",
    # The image has its own initramfs; Debian's generator must not run (slow, useless).
    "/etc/kernel/postinst.d/initramfs-tools",
]
INCLUDES = ["/usr/share/doc/*/copyright"]

PURGE = [
    "initramfs-tools",
    "initramfs-tools-core",
    "klibc-utils",
    "libklibc",
    "usrmerge",
    "libfile-find-rule-perl",
    "libnumber-compare-perl",
    "libtext-glob-perl",
    "perl",
    "perl-modules-5.36",
    "libperl5.36",
]
"""Pulled in by dependencies but useless in a running Keel machine (the kernel package's
initramfs generator; usrmerge and the 55 MB of perl it needs, which mmdebstrap picks for
the essential set before ``usr-is-merged`` is considered); removed after installation."""


def key(recipe: Recipe) -> str:
    """Cache key: what mmdebstrap sees."""
    d = recipe.definition
    return digest(
        STAGE,
        VERSION,
        code_digest(sys.modules[__name__]),
        d.suite,
        d.mirror,
        d.sources,
        sorted({*recipe.packages, *BASE_PACKAGES}),
        EXCLUDES,
        d.source_date_epoch,
    )


def build(recipe: Recipe, cache: StageCache) -> Path:
    """Return the cached stage directory (``tree/`` and ``packages.tsv`` inside)."""
    k = key(recipe)
    if hit := cache.lookup(STAGE, k):
        return hit
    tools.require("mmdebstrap", stage=STAGE)
    d = recipe.definition
    with cache.produce(STAGE, k) as work:
        tree = work / "tree"
        debs = cache.debs
        sources = [f"deb {d.mirror} {d.suite} main", *d.sources]
        dpkgopts = [f"path-exclude={p}" for p in EXCLUDES] + [f"path-include={p}" for p in INCLUDES]
        purge = " ".join(PURGE)
        # Not --quiet: apt's "Unable to locate package" lines are only printed without it.
        argv: list[str | Path] = [
            "mmdebstrap",
            "--variant=essential",
            "--mode=root",
            "--format=directory",
            "--skip=download/empty",
            "--skip=essential/unlink",
            f"--include={','.join(sorted({*recipe.packages, *BASE_PACKAGES}))}",
            *[f"--dpkgopt={o}" for o in dpkgopts],
            '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
            f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
            f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
            f'--customize-hook=chroot "$1" dpkg --purge --force-depends {purge} >/dev/null 2>&1'
            " || true",
            '--customize-hook=chroot "$1" dpkg-query -W'
            " -f '${Package}\\t${Version}\\t${Installed-Size}\\n' > \"$1\"/../packages.tsv",
            d.suite,
            tree,
            *sources,
        ]
        try:
            tools.run(argv, stage=STAGE, env={"SOURCE_DATE_EPOCH": str(d.source_date_epoch)})
        except BuildError as exc:
            raise _explain(exc, recipe) from None
        for leftover in (tree / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        shutil.rmtree(tree / "var/lib/apt/lists", ignore_errors=True)
        (tree / "var/lib/apt/lists").mkdir(parents=True, exist_ok=True)
    cache.prune(STAGE)
    return cache.path(STAGE, k)


def _explain(exc: BuildError, recipe: Recipe) -> Exception:
    """Turn apt's "Unable to locate package X" into an error at the line that asked for X."""
    m = re.search(r"Unable to locate package (\S+)", exc.output) or re.search(
        r"Package '?(\S+?)'? has no installation candidate", exc.output
    )
    if not m:
        return exc
    name = m.group(1)
    d = recipe.definition
    where = f"suite {d.suite} at {d.mirror}"
    if name in d.packages:
        return locate(
            recipe.path,
            "packages",
            d.packages.index(name),
            f"unknown Debian package {name!r} in {where}",
        )
    if name == d.kernel:
        return locate(recipe.path, "kernel", None, f"unknown kernel package {name!r} in {where}")
    askers = [c.name for c in recipe.contributions if name in c.packages]
    askers += [f"platform {p.name}" for p in recipe.platforms if name in p.packages]
    return BuildError(
        STAGE,
        f"unknown Debian package {name!r} in {where}, asked for by {', '.join(askers) or '?'}",
        "fix the package name in that plugin's keel_image_contribution",
    )
