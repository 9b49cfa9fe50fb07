"""Helpers shared by the WAL tests."""

from __future__ import annotations

from keel_store.raft.types import Entry


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    """Entries ``first..last`` of ``term``, each carrying its own index as data."""
    return [Entry(term, i, data=f"{term}/{i}".encode()) for i in range(first, last + 1)]
