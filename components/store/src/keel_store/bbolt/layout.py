"""bbolt's on-disk structures (go.etcd.io/bbolt ``page.go``, ``db.go``, ``bucket.go``).

Everything is little-endian (the layout of Go structs on amd64/arm64):

* page header, 16 bytes: ``id u64, flags u16, count u16, overflow u32``; a page that
  does not fit in one page size continues over ``overflow`` more pages;
* leaf element, 16 bytes: ``flags u32, pos u32, ksize u32, vsize u32``; branch element,
  16 bytes: ``pos u32, ksize u32, pgid u64``. ``pos`` is the distance from the element
  itself to its key (the value follows the key); elements come first, data after them;
* meta (pages 0 and 1, after the page header): ``magic u32, version u32, pageSize u32,
  flags u32, root bucket (root pgid u64, sequence u64), freelist pgid u64, pgid u64
  (high water mark), txid u64, checksum u64`` where the checksum is FNV-64a of the
  56 bytes before it; the valid meta with the higher txid is the current one;
* a bucket is a leaf value flagged ``BUCKET_LEAF`` holding ``root pgid u64, sequence
  u64``; root 0 means inline: a leaf page (header with id 0) follows in the value.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from operator import itemgetter

PAGE_SIZE = 4096
"""The page size written (etcd on Linux/amd64 uses the OS page size, 4096)."""
MAGIC = 0xED0CDAED
VERSION = 2
NO_FREELIST = 0xFFFF_FFFF_FFFF_FFFF
"""``pgidNoFreelist``: the freelist is not stored (``NoFreelistSync``)."""

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF = 0x01
"""Leaf element flag: the value is a nested bucket."""

PAGE_HEADER = struct.Struct("<QHHI")
LEAF_ELEMENT = struct.Struct("<IIII")
BRANCH_ELEMENT = struct.Struct("<IIQ")
BUCKET_HEADER = struct.Struct("<QQ")
META = struct.Struct("<IIIIQQQQQQ")
META_SUMMED = 56
"""Bytes of the meta covered by its checksum (everything before the checksum)."""
PGID = struct.Struct("<Q")

_FNV_OFFSET = 0xCBF2_9CE4_8422_2325
_FNV_PRIME = 0x0000_0100_0000_01B3
_U64 = (1 << 64) - 1


class BoltError(ValueError):
    """The bytes are not a sound bbolt database; the message says what is wrong."""


def fnv64a(data: bytes) -> int:
    """FNV-1a, 64 bit (Go's ``hash/fnv.New64a``), the meta page checksum."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _U64
    return h


@dataclass(slots=True)
class Meta:
    """A meta page's fields."""

    page_size: int
    root: int
    freelist: int
    pgid: int
    txid: int
    sequence: int = 0
    flags: int = 0
    magic: int = MAGIC
    version: int = VERSION
    checksum: int = 0

    def pack(self) -> bytes:
        """The 64 meta bytes, with the checksum computed."""
        head = META.pack(
            self.magic,
            self.version,
            self.page_size,
            self.flags,
            self.root,
            self.sequence,
            self.freelist,
            self.pgid,
            self.txid,
            0,
        )[:META_SUMMED]
        return head + PGID.pack(fnv64a(head))

    @classmethod
    def unpack(cls, data: bytes) -> Meta:
        (magic, version, page_size, flags, root, seq, freelist, pgid, txid, checksum) = (
            META.unpack_from(data)
        )
        return cls(page_size, root, freelist, pgid, txid, seq, flags, magic, version, checksum)

    def problem(self, raw: bytes) -> str | None:
        """Why this meta is unusable (bbolt's ``meta.validate``), or ``None``."""
        if self.magic != MAGIC:
            return f"bad magic {self.magic:#010x} (not a bbolt database)"
        if self.version != VERSION:
            return f"unsupported bbolt version {self.version}"
        if self.checksum != fnv64a(raw[:META_SUMMED]):
            return "meta checksum mismatch"
        return None


@dataclass
class Bucket:
    """A bucket: plain key/values and nested buckets (their keys are disjoint)."""

    items: dict[bytes, bytes] = field(default_factory=dict)
    buckets: dict[bytes, Bucket] = field(default_factory=dict)
    sequence: int = 0

    def bucket(self, name: bytes) -> Bucket:
        """The nested bucket ``name``, created empty if missing."""
        child = self.buckets.get(name)
        if child is None:
            child = self.buckets[name] = Bucket()
        return child

    def entries(self) -> list[tuple[bytes, Bucket | bytes]]:
        """Every key (items and buckets) with its value, in bbolt's (byte) order."""
        merged: list[tuple[bytes, Bucket | bytes]] = [*self.items.items(), *self.buckets.items()]
        merged.sort(key=itemgetter(0))
        return merged
