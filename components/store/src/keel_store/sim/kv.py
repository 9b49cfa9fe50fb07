"""The replicated state machine of the simulation: a tiny key-value store.

Commands travel in log entries as ``op_id|kind|key|value|expected`` (ASCII); every write
records its op ID, so the end of a run can prove no acknowledged write was lost.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

ABSENT = ""
"""Encodes "no value" (``expected`` of a put-if-absent); real values are never empty."""


@dataclass(frozen=True, slots=True)
class Command:
    """One write: put, delete or cas (``expected`` empty: the key must be absent)."""

    op_id: int
    kind: str
    key: str
    value: str = ABSENT
    expected: str = ABSENT

    def encode(self) -> bytes:
        """Log entry data."""
        return f"{self.op_id}|{self.kind}|{self.key}|{self.value}|{self.expected}".encode()

    @classmethod
    def decode(cls, data: bytes) -> Command:
        """Parse what :meth:`encode` produced."""
        op_id, kind, key, value, expected = data.decode().split("|")
        return cls(int(op_id), kind, key, value, expected)


class KVStore:
    """Key → value, plus the result of every write applied so far (by op ID)."""

    __slots__ = ("data", "results")

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.results: dict[int, bool | None] = {}

    def apply(self, cmd: Command) -> bool | None:
        """Apply a write; returns its output (cas: wrote?, delete: existed?, put: None)."""
        result: bool | None = None
        if cmd.kind == "put":
            self.data[cmd.key] = cmd.value
        elif cmd.kind == "delete":
            result = self.data.pop(cmd.key, None) is not None
        elif cmd.kind == "cas":
            current = self.data.get(cmd.key, ABSENT)
            result = current == cmd.expected
            if result:
                self.data[cmd.key] = cmd.value
        else:
            raise ValueError(f"unknown command kind {cmd.kind!r} in op {cmd.op_id}")
        self.results[cmd.op_id] = result
        return result

    def get(self, key: str) -> str | None:
        """The value of ``key``, None if absent."""
        return self.data.get(key)

    def dump(self) -> bytes:
        """Snapshot data."""
        return pickle.dumps((self.data, self.results))

    @classmethod
    def load(cls, blob: bytes) -> KVStore:
        """Rebuild from :meth:`dump` output (empty bytes: empty store)."""
        store = cls()
        if blob:
            store.data, store.results = pickle.loads(blob)
            store.data = dict(store.data)
            store.results = dict(store.results)
        return store
