"""State-machine snapshots: the whole key space (with history), leases and indexes.

Format (version 1): ``KEELSNAP1\\n``, one JSON line with the scalar state and leases,
then per key ``u32 len, key, u32 n`` and ``n`` entries of ``i64 revision, i32 len,
KeyValue bytes`` (len -1: a deletion). Deterministic: equal states give equal bytes.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

from google.protobuf.message import DecodeError

from keel_store.mvcc.keyspace import KeyHistory, KeyValue
from keel_store.mvcc.store import Lease, MemberRecord, StateMachine

MAGIC = b"KEELSNAP1\n"
_U32 = struct.Struct(">I")
_ENTRY = struct.Struct(">qi")


def save(sm: StateMachine) -> bytes:
    """Serialize ``sm``."""
    out = io.BytesIO()
    out.write(MAGIC)
    head = {
        "revision": sm.kv.revision,
        "compact_revision": sm.kv.compact_revision,
        "applied_index": sm.applied_index,
        "members": [
            [m.id, m.name, m.peer_urls, m.is_learner]
            for m in sorted(sm.members.values(), key=lambda m: m.id)
        ],
        "leases": [
            [lease.id, lease.ttl] for lease in sorted(sm.leases.values(), key=lambda x: x.id)
        ],
    }
    out.write(json.dumps(head, sort_keys=True).encode() + b"\n")
    for key, history in sm.kv.histories():
        out.write(_U32.pack(len(key)) + key + _U32.pack(len(history.revs)))
        for rev, kv in zip(history.revs, history.kvs, strict=True):
            if kv is None:
                out.write(_ENTRY.pack(rev, -1))
            else:
                blob = kv.SerializeToString(deterministic=True)
                out.write(_ENTRY.pack(rev, len(blob)) + blob)
    return out.getvalue()


def restore(data: bytes) -> StateMachine:
    """Rebuild a state machine from :func:`save`'s bytes; ValueError if malformed."""
    if not data.startswith(MAGIC):
        raise ValueError("not a keel-store snapshot (bad magic)")
    view = memoryview(data)
    newline = data.index(b"\n", len(MAGIC))
    head = json.loads(data[len(MAGIC) : newline])
    sm = StateMachine()
    sm.kv.revision = head["revision"]
    sm.kv.compact_revision = head["compact_revision"]
    sm.applied_index = head["applied_index"]
    for mid, name, peer_urls, is_learner in head.get("members", []):
        sm.members[mid] = MemberRecord(mid, name, peer_urls, is_learner)
    for lease_id, ttl in head["leases"]:
        sm.leases[lease_id] = Lease(lease_id, ttl)
    pos = newline + 1
    try:
        while pos < len(data):
            (klen,) = _U32.unpack_from(view, pos)
            key = bytes(view[pos + 4 : pos + 4 + klen])
            pos += 4 + klen
            (count,) = _U32.unpack_from(view, pos)
            pos += 4
            history = KeyHistory()
            for _ in range(count):
                rev, length = _ENTRY.unpack_from(view, pos)
                pos += _ENTRY.size
                kv: KeyValue | None = None
                if length >= 0:
                    if pos + length > len(data):
                        raise ValueError("entry runs past the end")
                    kv = KeyValue()
                    kv.ParseFromString(bytes(view[pos : pos + length]))
                    pos += length
                history.revs.append(rev)
                history.kvs.append(kv)
            sm.kv.restore_history(key, history)
            latest = history.latest()
            if latest is not None and latest.lease in sm.leases:
                sm.leases[latest.lease].keys.add(key)
    except (struct.error, ValueError, DecodeError) as exc:
        raise ValueError(f"truncated or corrupt snapshot at byte {pos}: {exc}") from exc
    sm.kv.restore_events()
    return sm


def hash_kv(sm: StateMachine, revision: int) -> int:
    """Maintenance.HashKV: CRC-32 of every version at or below ``revision``.

    Members with the same history give the same hash (what ``etcdctl endpoint hashkv``
    compares); the value differs from etcd's, which hashes its bbolt layout.
    """
    crc = 0
    for key, history in sm.kv.histories():
        for rev, kv in zip(history.revs, history.kvs, strict=True):
            if rev > revision:
                break
            crc = zlib.crc32(key + struct.pack(">q", rev), crc)
            if kv is not None:
                crc = zlib.crc32(kv.SerializeToString(deterministic=True), crc)
    return crc
