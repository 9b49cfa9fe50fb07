"""Plain functions behind the CLI verbs ``images``, ``load``, ``pull`` and ``rmi``.

The CLI (track sup-run) parses arguments and calls these; they print through a rich Console,
show progress for long transfers when the console is a terminal, and raise ImageError subclasses
(KeelError) that the CLI prints without a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from keel_supervisor.images.credentials import find_credentials
from keel_supervisor.images.errors import ImageError
from keel_supervisor.images.image import Image
from keel_supervisor.images.reference import familiar, parse_reference
from keel_supervisor.images.store import ImageStore


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Progress | None]:
    if not console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield progress


def human_size(size: float) -> str:
    """``1.9MB``-style sizes, as ``docker images`` prints them (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.3g}{unit}"
        size /= 1000
    return f"{size:.3g}TB"


def _age(created: str) -> str:
    try:
        when = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return created or "?"
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, length in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= length:
            return f"{int(seconds // length)} {unit} ago"
    return "just now"


def image_rows(images: list[Image]) -> list[tuple[str, str, str, str, str]]:
    """(repository, tag, short id, created, size) per name; ``<none>`` for unnamed images."""
    rows = []
    for image in images:
        short = image.id[7:19]
        names = image.references or ("<none>:<none>",)
        for name in names:
            if "@" in name:  # pulled by digest
                repo, tag = familiar(name).split("@", 1)[0], "<none>"
            else:
                repo, _, tag = familiar(name).rpartition(":")
            rows.append((repo, tag, short, _age(image.created), human_size(image.size)))
    return rows


def images(store: ImageStore, console: Console, *, quiet: bool = False) -> list[Image]:
    """``keel images``: a table of images (``quiet``: ids only)."""
    found = store.list()
    if quiet:
        for image in found:
            console.print(image.id[7:19], highlight=False)
        return found
    table = Table("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", box=None)
    for row in image_rows(found):
        table.add_row(*row)
    console.print(table)
    return found


def load(store: ImageStore, archive: Path, console: Console) -> list[Image]:
    """``keel load -i ARCHIVE``: import a docker/podman save archive or an OCI layout."""
    with _progress(console) as progress:
        loaded = store.load(archive, progress=progress)
    for image in loaded:
        names = ", ".join(familiar(r) for r in image.references) or image.id
        console.print(f"Loaded image: {names}", highlight=False)
    return loaded


def parse_creds(creds: str | None) -> tuple[str, str] | None:
    """``user:password`` (as ``--creds`` takes it) -> (user, password)."""
    if creds is None:
        return None
    user, sep, password = creds.partition(":")
    if not sep or not user:
        raise ImageError("--creds must be USER:PASSWORD")
    return user, password


def pull(
    store: ImageStore,
    reference: str,
    console: Console,
    *,
    insecure: bool = False,
    creds: str | None = None,
) -> Image:
    """``keel pull [--insecure] [--creds U:P] REF``: pull from an OCI distribution registry.

    Without ``creds``, credentials saved by ``podman login`` / ``docker login`` are used.
    """
    ref = parse_reference(reference)
    auth = parse_creds(creds) if creds is not None else find_credentials(ref.registry)
    with _progress(console) as progress:
        image = store.pull(str(ref), insecure=insecure, auth=auth, progress=progress)
    console.print(f"Digest: {image.manifest_digest}", highlight=False)
    console.print(f"Pulled: {familiar(str(ref))} ({image.id[7:19]})", highlight=False)
    return image


def rmi(store: ImageStore, references: list[str], console: Console, *, force: bool = False) -> int:
    """``keel rmi [--force] REF...``: remove names/images, then free unreferenced space.

    Returns the bytes freed. Stops at the first error (after reporting what was done).
    """
    for reference in references:
        result = store.remove(reference, force=force)
        for name in result.untagged:
            console.print(f"Untagged: {familiar(name)}", highlight=False)
        for image_id in result.deleted:
            console.print(f"Deleted: {image_id}", highlight=False)
    freed = store.gc()
    if freed:
        console.print(f"Freed {human_size(freed)}", highlight=False)
    return freed
