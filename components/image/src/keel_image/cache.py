"""Content-addressed cache of build stages.

Each stage's result lives in ``<cache>/stages/<stage>/<key>/``, where the key is the
hash of everything the stage reads (its options, the keys of the stages before it,
the digests of host files it copies). A stage writes into a temporary directory that
is renamed into place only when the stage succeeded, so a failed or interrupted build
never leaves a result that looks complete. The cache is shared by every checkout on
the machine (``KEEL_CACHE_DIR``, default ``~/.cache/keel``); entries are immutable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

KEEP_PER_STAGE = 3
"""Entries kept per stage; older ones are removed after a successful build."""


def default_root() -> Path:
    """``$KEEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/keel``, else ``~/.cache/keel``."""
    if env := os.environ.get("KEEL_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "keel"


def digest(*parts: object) -> str:
    """A stable hash of JSON-able parts (dict keys sorted), 32 hex digits."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def code_digest(*modules: ModuleType) -> str:
    """Hash of the source of ``modules``: a stage's key includes the code that makes it."""
    return digest(*[file_digest(Path(m.__file__ or "")) for m in modules])


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class StageCache:
    """Finds and stores stage results by key."""

    def __init__(self, root: Path | None = None, *, enabled: bool = True) -> None:
        self.root = (root or default_root()) / "image"
        self.enabled = enabled

    def path(self, stage: str, key: str) -> Path:
        """Where the result of ``stage`` with ``key`` lives (whether or not it exists)."""
        return self.root / "stages" / stage / key

    def lookup(self, stage: str, key: str) -> Path | None:
        """The stored result, or ``None``. A hit is touched so pruning keeps it."""
        if not self.enabled:
            return None
        p = self.path(stage, key)
        if p.is_dir():
            os.utime(p)
            return p
        return None

    @contextmanager
    def produce(self, stage: str, key: str) -> Iterator[Path]:
        """Yield an empty work directory; on success it becomes the stage's result."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            yield work
            if final.exists():  # built twice (no cache, or a parallel build): replace
                shutil.rmtree(final)
            work.rename(final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)

    def prune(self, stage: str, keep: int = KEEP_PER_STAGE) -> None:
        """Remove all but the ``keep`` most recently used results of ``stage``."""
        parent = self.root / "stages" / stage
        if not parent.is_dir():
            return
        entries = sorted(
            (p for p in parent.iterdir() if not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in entries[keep:]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in parent.glob(".*"):  # leftovers of killed builds, older than an hour
            if time.time() - tmp.stat().st_mtime > 3600:
                shutil.rmtree(tmp, ignore_errors=True)

    @property
    def debs(self) -> Path:
        """The shared .deb cache (package files keyed by name and version)."""
        p = self.root / "debs"
        p.mkdir(parents=True, exist_ok=True)
        return p
