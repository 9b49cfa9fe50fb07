"""Read a bbolt file into a :class:`~keel_store.bbolt.layout.Bucket` tree, and check it.

Parsing refuses what bbolt would refuse (no valid meta page, pages past the end of the
file) with a :class:`BoltError`; :meth:`Database.problems` lists what bbolt's
``Tx.Check`` reports (pages referenced twice, pages neither reachable nor free, a
freed page in use) plus a damaged second meta page, which bbolt silently skips.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from keel_store.bbolt.layout import (
    BRANCH_ELEMENT,
    BRANCH_PAGE,
    BUCKET_HEADER,
    BUCKET_LEAF,
    FREELIST_PAGE,
    LEAF_ELEMENT,
    LEAF_PAGE,
    META,
    NO_FREELIST,
    PAGE_HEADER,
    PAGE_SIZE,
    PGID,
    BoltError,
    Bucket,
    Meta,
)


@dataclass
class Database:
    """A parsed bbolt file: the tree of the current meta page, and what is wrong."""

    page_size: int
    meta: Meta
    root: Bucket
    free: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Bytes in use up to the high water mark (``Tx.Size``: pgid times the page size)."""
        return self.meta.pgid * self.page_size


class _Parser:
    def __init__(self, data: bytes, meta: Meta) -> None:
        self.data = memoryview(data)
        self.meta = meta
        self.page_size = meta.page_size
        self.reachable: dict[int, int] = {}
        self.problems: list[str] = []

    def header(self, pgid: int) -> tuple[int, int, int, int]:
        offset = pgid * self.page_size
        if pgid >= self.meta.pgid or offset + PAGE_HEADER.size > len(self.data):
            raise BoltError(f"page {pgid}: beyond the high water mark {self.meta.pgid}")
        page_id, flags, count, overflow = PAGE_HEADER.unpack_from(self.data, offset)
        if page_id != pgid:
            raise BoltError(f"page {pgid}: header says page {page_id}")
        if pgid + overflow >= self.meta.pgid:
            raise BoltError(f"page {pgid}: overflow {overflow} runs past the high water mark")
        return page_id, flags, count, overflow

    def mark(self, pgid: int, overflow: int) -> None:
        for i in range(pgid, pgid + overflow + 1):
            if i in self.reachable:
                self.problems.append(f"page {i}: multiple references")
            self.reachable[i] = pgid

    def leaf(
        self, buf: memoryview, base: int, count: int, end: int
    ) -> list[tuple[bytes, int, bytes]]:
        """Leaf elements of the page at ``base`` in ``buf`` (page bytes end at ``end``)."""
        out = []
        for i in range(count):
            at = base + PAGE_HEADER.size + i * LEAF_ELEMENT.size
            if at + LEAF_ELEMENT.size > end:
                raise BoltError(f"leaf element {i} beyond its page")
            flags, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(buf, at)
            start = at + pos
            if start + ksize + vsize > end:
                raise BoltError(f"leaf element {i}: key/value beyond its page")
            key = bytes(buf[start : start + ksize])
            value = bytes(buf[start + ksize : start + ksize + vsize])
            out.append((key, flags, value))
        return out

    def walk(self, pgid: int, bucket: Bucket, depth: int = 0) -> None:
        """Add the elements under page ``pgid`` to ``bucket``."""
        if depth > 64:
            raise BoltError(f"page {pgid}: tree deeper than 64 levels (a cycle?)")
        if pgid < 2:
            raise BoltError(f"page {pgid}: a meta page used as a bucket page")
        _, flags, count, overflow = self.header(pgid)
        if pgid in self.reachable:  # do not walk a shared subtree twice (or a cycle)
            self.problems.append(f"page {pgid}: multiple references")
            return
        self.mark(pgid, overflow)
        base = pgid * self.page_size
        end = base + (overflow + 1) * self.page_size
        if end > len(self.data):
            raise BoltError(f"page {pgid}: runs past the end of the file")
        if flags & BRANCH_PAGE:
            for i in range(count):
                at = base + PAGE_HEADER.size + i * BRANCH_ELEMENT.size
                if at + BRANCH_ELEMENT.size > end:
                    raise BoltError(f"page {pgid}: branch element {i} beyond the page")
                _, _, child = BRANCH_ELEMENT.unpack_from(self.data, at)
                self.walk(child, bucket, depth + 1)
        elif flags & LEAF_PAGE:
            try:
                elements = self.leaf(self.data, base, count, end)
            except BoltError as exc:
                raise BoltError(f"page {pgid}: {exc}") from None
            self.add(bucket, elements, depth)
        else:
            raise BoltError(f"page {pgid}: not a branch or leaf page (flags {flags:#x})")

    def add(self, bucket: Bucket, elements: list[tuple[bytes, int, bytes]], depth: int) -> None:
        for key, flags, value in elements:
            if flags & BUCKET_LEAF:
                bucket.buckets[key] = self.nested(key, value, depth)
            else:
                bucket.items[key] = value

    def nested(self, name: bytes, value: bytes, depth: int) -> Bucket:
        if len(value) < BUCKET_HEADER.size:
            raise BoltError(f"bucket {name!r}: header of {len(value)} bytes")
        root, sequence = BUCKET_HEADER.unpack_from(value)
        child = Bucket(sequence=sequence)
        if root:
            self.walk(root, child, depth + 1)
            return child
        buf = memoryview(value)
        base = BUCKET_HEADER.size
        if len(value) < base + PAGE_HEADER.size:
            raise BoltError(f"inline bucket {name!r}: no page")
        _, flags, count, _ = PAGE_HEADER.unpack_from(buf, base)
        if not flags & LEAF_PAGE:
            raise BoltError(f"inline bucket {name!r}: not a leaf page")
        try:
            elements = self.leaf(buf, base, count, len(value))
        except BoltError as exc:
            raise BoltError(f"inline bucket {name!r}: {exc}") from None
        self.add(child, elements, depth + 1)
        return child

    def freelist(self) -> set[int]:
        pgid = self.meta.freelist
        if pgid == NO_FREELIST:
            return set()
        _, flags, count, overflow = self.header(pgid)
        if not flags & FREELIST_PAGE:
            raise BoltError(f"page {pgid}: the freelist page is not a freelist (flags {flags:#x})")
        self.mark(pgid, overflow)
        at = pgid * self.page_size + PAGE_HEADER.size
        if count == 0xFFFF:
            (count,) = PGID.unpack_from(self.data, at)
            at += PGID.size
        if at + count * PGID.size > (pgid + overflow + 1) * self.page_size:
            raise BoltError(f"page {pgid}: freelist of {count} ids runs past its pages")
        ids = struct.unpack_from(f"<{count}Q", self.data, at)
        free: set[int] = set()
        for i in ids:
            if i in free:
                self.problems.append(f"page {i}: already freed")
            free.add(i)
        return free


def _metas(data: bytes) -> tuple[list[tuple[int, Meta]], list[str]]:
    """The valid meta pages (page number, meta) and what is wrong with the others."""
    if len(data) < PAGE_HEADER.size + META.size:
        raise BoltError(f"not a bbolt database: only {len(data)} bytes")
    first = Meta.unpack(data[PAGE_HEADER.size :])
    page_size = first.page_size if first.problem(data[PAGE_HEADER.size :]) is None else PAGE_SIZE
    valid, bad = [], []
    for n in (0, 1):
        offset = n * page_size + PAGE_HEADER.size
        raw = data[offset : offset + META.size]
        if len(raw) < META.size:
            bad.append(f"meta page {n}: missing (file of {len(data)} bytes)")
            continue
        meta = Meta.unpack(raw)
        problem = meta.problem(raw)
        if problem is None and meta.page_size != page_size:
            problem = f"page size {meta.page_size} differs from meta page 0's {page_size}"
        if problem is None:
            valid.append((n, meta))
        else:
            bad.append(f"meta page {n}: {problem}")
    return valid, bad


def read_db(data: bytes) -> Database:
    """Parse a bbolt file (``BoltError`` if it cannot be read at all)."""
    valid, bad = _metas(data)
    if not valid:
        raise BoltError("; ".join(bad))
    _, meta = max(valid, key=lambda nm: nm[1].txid)
    if meta.page_size < 512 or meta.page_size & (meta.page_size - 1):
        raise BoltError(f"meta: page size {meta.page_size} is not a power of two >= 512")
    if meta.pgid * meta.page_size > len(data):
        raise BoltError(
            f"truncated: the meta page says {meta.pgid} pages of {meta.page_size} bytes "
            f"({meta.pgid * meta.page_size} bytes), the file has {len(data)}"
        )
    parser = _Parser(data, meta)
    parser.mark(0, 0)
    parser.mark(1, 0)
    free = parser.freelist()
    root = Bucket(sequence=meta.sequence)
    parser.walk(meta.root, root)
    if root.items:
        raise BoltError(f"root bucket: {len(root.items)} keys that are not buckets")
    problems = [*bad, *parser.problems]
    for pgid in sorted(free & parser.reachable.keys()):
        problems.append(f"page {pgid}: reachable freed")
    if meta.freelist != NO_FREELIST:
        for pgid in range(meta.pgid):
            if pgid not in parser.reachable and pgid not in free:
                problems.append(f"page {pgid}: unreachable unfreed")
    return Database(meta.page_size, meta, root, free, problems)
