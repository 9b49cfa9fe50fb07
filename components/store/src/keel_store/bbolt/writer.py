"""Lay a :class:`~keel_store.bbolt.layout.Bucket` tree out as a bbolt file.

The file is what a freshly compacted bbolt database looks like: meta pages 0 and 1
(both valid, txids 0 and 1, describing the same tree), an empty freelist on page 2, then
the pages of every bucket, each filled up to one page size (a single element larger than
that gets an overflow page run). Buckets that are small and have no nested buckets are
stored inline in their parent, as bbolt does for buckets up to a quarter page.
"""

from __future__ import annotations

from keel_store.bbolt.layout import (
    BRANCH_ELEMENT,
    BRANCH_PAGE,
    BUCKET_HEADER,
    BUCKET_LEAF,
    FREELIST_PAGE,
    LEAF_ELEMENT,
    LEAF_PAGE,
    META_PAGE,
    PAGE_HEADER,
    PAGE_SIZE,
    BoltError,
    Bucket,
    Meta,
)

_Leaf = tuple[bytes, int, bytes]
"""A leaf element: key, flags, value."""
_Branch = tuple[bytes, int]
"""A branch element: the first key of the child page, the child's page id."""

_MAX_KEY = 32768
"""bbolt's ``MaxKeySize``."""


def _leaf_body(elements: list[_Leaf]) -> bytes:
    heads, data = [], []
    offset = LEAF_ELEMENT.size * len(elements)
    for i, (key, flags, value) in enumerate(elements):
        pos = offset - i * LEAF_ELEMENT.size
        heads.append(LEAF_ELEMENT.pack(flags, pos, len(key), len(value)))
        data.append(key + value)
        offset += len(key) + len(value)
    return b"".join(heads) + b"".join(data)


def _branch_body(elements: list[_Branch]) -> bytes:
    heads, data = [], []
    offset = BRANCH_ELEMENT.size * len(elements)
    for i, (key, pgid) in enumerate(elements):
        pos = offset - i * BRANCH_ELEMENT.size
        heads.append(BRANCH_ELEMENT.pack(pos, len(key), pgid))
        data.append(key)
        offset += len(key)
    return b"".join(heads) + b"".join(data)


def _leaf_size(element: _Leaf) -> int:
    return LEAF_ELEMENT.size + len(element[0]) + len(element[2])


def _branch_size(element: _Branch) -> int:
    return BRANCH_ELEMENT.size + len(element[0])


class _Writer:
    """Allocates pages in order and collects their bytes."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.next_id = 3  # 0, 1: meta; 2: freelist
        self.chunks: list[bytes] = []

    def _page(self, flags: int, count: int, body: bytes) -> int:
        pgid = self.next_id
        size = PAGE_HEADER.size + len(body)
        pages = -(-size // self.page_size)
        head = PAGE_HEADER.pack(pgid, flags, count, pages - 1)
        self.chunks.append(head + body + b"\0" * (pages * self.page_size - size))
        self.next_id += pages
        return pgid

    def _chunks(self, sizes: list[int]) -> list[tuple[int, int]]:
        """Split element sizes into [start, end) runs that fill at most one page each."""
        runs, start, used = [], 0, PAGE_HEADER.size
        for i, size in enumerate(sizes):
            if i > start and used + size > self.page_size:
                runs.append((start, i))
                start, used = i, PAGE_HEADER.size
            used += size
        runs.append((start, len(sizes)))
        return runs

    def tree(self, elements: list[_Leaf]) -> int:
        """Write leaf pages (and branch pages above them); returns the root page id."""
        level: list[_Branch] = []
        for start, end in self._chunks([_leaf_size(e) for e in elements]):
            leaves = elements[start:end]
            pgid = self._page(LEAF_PAGE, len(leaves), _leaf_body(leaves))
            level.append((leaves[0][0] if leaves else b"", pgid))
        while len(level) > 1:
            upper: list[_Branch] = []
            for start, end in self._chunks([_branch_size(e) for e in level]):
                part = level[start:end]
                pgid = self._page(BRANCH_PAGE, len(part), _branch_body(part))
                upper.append((part[0][0], pgid))
            level = upper
        return level[0][1]

    def elements(self, bucket: Bucket) -> list[_Leaf]:
        """The leaf elements of ``bucket``, writing nested buckets first."""
        out: list[_Leaf] = []
        for key, value in bucket.entries():
            if not key or len(key) > _MAX_KEY:
                raise BoltError(f"key of {len(key)} bytes: bbolt keys are 1-{_MAX_KEY} bytes")
            if isinstance(value, Bucket):
                out.append((key, BUCKET_LEAF, self.bucket_value(value)))
            else:
                out.append((key, 0, value))
        return out

    def bucket_value(self, bucket: Bucket) -> bytes:
        """A nested bucket as its parent stores it: header, plus the page if inline."""
        elements = self.elements(bucket)
        inline_size = PAGE_HEADER.size + sum(_leaf_size(e) for e in elements)
        if not bucket.buckets and inline_size <= self.page_size // 4:
            page = PAGE_HEADER.pack(0, LEAF_PAGE, len(elements), 0) + _leaf_body(elements)
            return BUCKET_HEADER.pack(0, bucket.sequence) + page
        return BUCKET_HEADER.pack(self.tree(elements), bucket.sequence)


def write_db(root: Bucket, page_size: int = PAGE_SIZE) -> bytes:
    """The bytes of a bbolt file holding ``root``'s buckets (its top level).

    bbolt's root bucket holds only buckets, so ``root.items`` must be empty.
    """
    if root.items:
        raise BoltError("the root bucket can hold buckets only")
    writer = _Writer(page_size)
    root_pgid = writer.tree(writer.elements(root))
    high_water = writer.next_id
    out = bytearray()
    for txid in (0, 1):
        meta = Meta(page_size, root_pgid, freelist=2, pgid=high_water, txid=txid)
        page = PAGE_HEADER.pack(txid, META_PAGE, 0, 0) + meta.pack()
        out += page + b"\0" * (page_size - len(page))
    freelist = PAGE_HEADER.pack(2, FREELIST_PAGE, 0, 0)
    out += freelist + b"\0" * (page_size - len(freelist))
    for chunk in writer.chunks:
        out += chunk
    return bytes(out)
