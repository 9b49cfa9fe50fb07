"""The state machine as etcd 3.4 keeps it in bbolt, and back.

The buckets and keys are etcd's (``mvcc/kvstore.go``, ``lease/lessor.go``,
``auth/store.go``, ``etcdserver/api/membership/store.go``, ``v3alarm``):

======================  ==============================================================
``key``                 ``main u64 BE, '_', sub u64 BE`` (+ ``'t'`` for a deletion) ->
                        marshalled ``mvccpb.KeyValue`` (a deletion: only its key)
``meta``                ``consistent_index`` (u64 BE; once the key space had a write),
                        ``finishedCompactRev`` and ``scheduledCompactRev`` (a revision
                        key, sub 0)
``lease``               lease ID (i64 BE) -> ``leasepb.Lease{ID, TTL, RemainingTTL}``
``members``             member ID in hex -> JSON ``{"id", "peerURLs", "name", ...}``
``members_removed``     member ID in hex -> ``removed``
``cluster``             ``clusterVersion`` -> ``3.4.0``
``auth``                ``authEnabled`` (one byte, once enabled or disabled),
                        ``authRevision`` (u64 BE)
``authUsers``           name -> ``authpb.User``; ``authRoles``: name -> ``authpb.Role``
``alarm``               marshalled ``AlarmMember`` -> empty
======================  ==============================================================

The ``key`` bucket is built by :func:`key_bucket`, which HashKV hashes as well.
"""

from __future__ import annotations

import bisect
import json
import operator
import struct

from google.protobuf.message import DecodeError

from keel_store.bbolt import Bucket, Database, write_db, write_db_pieces
from keel_store.mvcc.auth import AuthStore, Perm, User
from keel_store.mvcc.keyspace import KeyHistory, KeyValue, collector_paused
from keel_store.mvcc.store import Lease, StateMachine
from keel_store.pb import authpb, rpcpb

CLUSTER_VERSION = b"3.4.0"
"""What etcd 3.4 keeps under ``cluster/clusterVersion``."""

_REV = struct.Struct(">QcQ")
_U64 = struct.Struct(">Q")
_MASK64 = (1 << 64) - 1
_INT64_LIMIT = 1 << 63
_ENABLED, _DISABLED = b"\x01", b"\x00"


class EtcdDBError(ValueError):
    """The bbolt file is readable but not etcd's layout; the message says where."""


def revision_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    """etcd's bbolt key of a revision (``revToBytes``), with the tombstone mark."""
    return _REV.pack(main, b"_", sub) + (b"t" if tombstone else b"")


KeyBucketEntry = tuple[int, int, bytes, bytes, bool]
"""One row of etcd's ``key`` bucket: ``(main, sub, key, value, live)``. ``key`` is the
bbolt key (:func:`revision_key`); ``live``: the latest version of its key at the
revision asked for, and not a deletion. A plain tuple: 680k rows are made and sorted
for a snapshot, and a ``NamedTuple`` took 0.24 us each to make (a plain tuple 0.03 us;
a frozen dataclass twice the ``NamedTuple``)."""


def key_bucket(sm: StateMachine, revision: int) -> list[KeyBucketEntry]:
    """etcd's ``key`` bucket rows up to ``revision``, in revision order."""
    rows: list[KeyBucketEntry] = []
    pack = _REV.pack
    for key, history in sm.kv.histories_unordered():
        revs, kvs, subs = history.revs, history.kvs, history.subs
        last = bisect.bisect_right(revs, revision) - 1  # the key's version at ``revision``
        for i in range(last + 1):
            rev, kv, sub = revs[i], kvs[i], subs[i]
            if kv is None:
                rows.append((rev, sub, pack(rev, b"_", sub) + b"t", _tombstone(key), False))
            else:
                value = kv.SerializeToString(deterministic=True)
                rows.append((rev, sub, pack(rev, b"_", sub), value, i == last))
    rows.sort()  # by (main, sub): unique, so the other fields are never compared
    return rows


_BOLT_KEY, _VALUE = operator.itemgetter(2), operator.itemgetter(3)
"""A :data:`KeyBucketEntry`'s ``key`` and ``value``."""


def _tombstone(key: bytes) -> bytes:
    """A deletion's value in etcd's key bucket: a KeyValue holding only the key, encoded
    here (field 1, length-delimited) rather than through a message built for it (290k
    tombstones: 0.84 -> 0.1 s; keys of 128 bytes or more took 0.7 s more in
    :func:`_varint` until their two length bytes were written here too)."""
    if not key:
        return b""  # proto3 leaves out an empty field
    n = len(key)
    if n < 0x80:
        return bytes((0x0A, n)) + key
    if n < 0x4000:  # two bytes of length (check perf's keys are 276 bytes long)
        return bytes((0x0A, n & 0x7F | 0x80, n >> 7)) + key
    return b"\n" + _varint(n) + key


# --- leasepb.Lease: three int64 fields, encoded by hand (no leasepb stubs here) --------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_lease(lease_id: int, ttl: int, remaining: int = 0) -> bytes:
    """``leasepb.Lease{ID, TTL, RemainingTTL}`` marshalled (zero fields omitted)."""
    out = b""
    for field_no, value in ((1, lease_id), (2, ttl), (3, remaining)):
        if value:
            out += _varint(field_no << 3) + _varint(value)
    return out


def decode_lease(data: bytes) -> tuple[int, int, int]:
    """(ID, TTL, RemainingTTL) of a marshalled ``leasepb.Lease``; ValueError if bad."""
    fields = {1: 0, 2: 0, 3: 0}
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    while pos < len(data):
        tag = varint()
        field_no, wire = tag >> 3, tag & 7
        if wire == 0:
            value = varint()
            if value >= 1 << 63:
                value -= 1 << 64
            if field_no in fields:
                fields[field_no] = value
        elif wire == 2:
            pos += varint()
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("field runs past the end")
    return fields[1], fields[2], fields[3]


# --- state machine -> buckets ----------------------------------------------------------


def etcd_database(sm: StateMachine) -> bytes:
    """``sm`` as etcd 3.4's bbolt file (what ``etcdctl snapshot save`` receives)."""
    return write_db(to_buckets(sm))


def etcd_database_pieces(sm: StateMachine) -> list[bytes]:
    """:func:`etcd_database` as the pieces that make it up, not joined."""
    return write_db_pieces(to_buckets(sm))


def to_buckets(sm: StateMachine) -> Bucket:
    """The root of an etcd 3.4 bbolt database holding ``sm``."""
    root = Bucket()
    rows = key_bucket(sm, sm.kv.revision)
    # In revision order, which is the bbolt keys' order (the writer's sort of them
    # then only checks it); made in C rather than a row at a time (680k rows: 0.5 s).
    root.bucket(b"key").items = dict(zip(map(_BOLT_KEY, rows), map(_VALUE, rows), strict=True))
    del rows
    meta = root.bucket(b"meta")
    if sm.kv.revision > 1:
        # etcd 3.4 saves its consistent index with a key-space write (storeTxnWrite.End),
        # so a store that never had one has an empty meta bucket.
        meta.items[b"consistent_index"] = _U64.pack(sm.applied_index)
    if sm.kv.compact_revision >= 0:
        meta.items[b"finishedCompactRev"] = revision_key(sm.kv.compact_revision, 0)
        meta.items[b"scheduledCompactRev"] = revision_key(sm.kv.compact_revision, 0)
    leases = root.bucket(b"lease")
    for lease in sm.leases.values():
        # An int64 ID keys etcd's lease bucket as its uint64 (big-endian) bytes.
        leases.items[_U64.pack(lease.id & _MASK64)] = encode_lease(lease.id, lease.ttl)
    members = root.bucket(b"members")
    removed = root.bucket(b"members_removed")
    for mid in sm.removed:
        removed.items[format(mid, "x").encode()] = b"removed"
    for m in sm.members.values():
        doc: dict[str, object] = {"id": m.id, "peerURLs": m.peer_urls}
        if m.is_learner:
            doc["isLearner"] = True
        if m.name:
            doc["name"] = m.name
        if m.client_urls:
            doc["clientURLs"] = m.client_urls
        members.items[format(m.id, "x").encode()] = json.dumps(doc, separators=(",", ":")).encode()
    root.bucket(b"cluster").items[b"clusterVersion"] = CLUSTER_VERSION
    auth = root.bucket(b"auth")
    if sm.auth.flag_stored:  # etcd writes it at the first enable or disable
        auth.items[b"authEnabled"] = _ENABLED if sm.auth.enabled else _DISABLED
    auth.items[b"authRevision"] = _U64.pack(sm.auth.revision)
    users = root.bucket(b"authUsers")
    for user in sm.auth.users.values():
        pb = authpb.User(name=user.name.encode(), password=user.password_hash)
        pb.roles.extend(sorted(user.roles))
        pb.options.no_password = user.no_password
        pb.options.SetInParent()
        users.items[user.name.encode()] = pb.SerializeToString(deterministic=True)
    roles = root.bucket(b"authRoles")
    for name, perms in sm.auth.roles.items():
        role = authpb.Role(name=name.encode())
        for p in perms:
            role.keyPermission.add(permType=p.type, key=p.key, range_end=p.range_end)
        roles.items[name.encode()] = role.SerializeToString(deterministic=True)
    alarms = root.bucket(b"alarm")
    for member, kind in sm.alarms:
        alarm = rpcpb.AlarmMember(memberID=member)
        alarm.alarm = kind  # type: ignore[assignment]
        alarms.items[alarm.SerializeToString()] = b""
    return root


# --- buckets -> state machine ----------------------------------------------------------


def _bucket(db: Database, name: bytes) -> Bucket:
    return db.root.buckets.get(name) or Bucket()


def _parse_rev(raw: bytes, where: str) -> tuple[int, int, bool]:
    if len(raw) not in (17, 18) or raw[8:9] != b"_" or (len(raw) == 18 and raw[17:] != b"t"):
        raise EtcdDBError(f"{where}: {raw.hex()} is not a revision key")
    main, _, sub = _REV.unpack_from(raw)
    if main >= _INT64_LIMIT or sub >= _INT64_LIMIT:  # etcd's revisions are int64
        raise EtcdDBError(f"{where}: {raw.hex()} holds a revision out of range")
    return main, sub, len(raw) == 18


def _load_keys(sm: StateMachine, db: Database) -> int:
    """Fill the key space from the ``key`` bucket; returns the last revision seen."""
    histories: dict[bytes, KeyHistory] = {}
    last = 0
    for raw, value in _bucket(db, b"key").items.items():
        main, sub, tombstone = _parse_rev(raw, "bucket key")
        kv = KeyValue()
        try:
            kv.ParseFromString(value)
        except DecodeError as exc:
            raise EtcdDBError(f"bucket key, revision {main}/{sub}: bad KeyValue: {exc}") from None
        if not kv.key:
            raise EtcdDBError(f"bucket key, revision {main}/{sub}: KeyValue without a key")
        history = histories.setdefault(kv.key, KeyHistory())
        if history.revs and history.revs[-1] >= main:
            raise EtcdDBError(f"bucket key, revision {main}/{sub}: out of order")
        history.revs.append(main)
        history.kvs.append(None if tombstone else kv)
        history.subs.append(sub)
        last = max(last, main)
    sm.kv.restore_histories([(key, histories[key]) for key in sorted(histories)])
    return last


def from_database(db: Database) -> StateMachine:
    """A state machine holding what the etcd bbolt database ``db`` holds.

    Members are not taken over (a restored member joins the cluster its flags
    describe, as ``etcdctl snapshot restore`` does); a compaction etcd had scheduled
    but not finished is finished here.
    """
    with collector_paused():
        return _from_database(db)


def _from_database(db: Database) -> StateMachine:
    sm = StateMachine()
    meta = _bucket(db, b"meta").items
    finished = scheduled = -1
    if b"finishedCompactRev" in meta:
        finished = _parse_rev(meta[b"finishedCompactRev"], "meta finishedCompactRev")[0]
    if b"scheduledCompactRev" in meta:
        scheduled = _parse_rev(meta[b"scheduledCompactRev"], "meta scheduledCompactRev")[0]
    sm.kv.compact_revision = finished
    last = _load_keys(sm, db)
    sm.kv.revision = max(last, finished, 1)
    for raw, value in _bucket(db, b"lease").items.items():
        try:
            lease_id, ttl, _ = decode_lease(value)
        except ValueError as exc:
            raise EtcdDBError(f"bucket lease, key {raw.hex()}: bad Lease: {exc}") from None
        sm.leases[lease_id] = Lease(lease_id, ttl)
    for key, history in sm.kv.histories_unordered():
        latest = history.latest()
        if latest is not None and latest.lease in sm.leases:
            sm.leases[latest.lease].keys.add(key)
    sm.auth = _load_auth(db)
    for raw in _bucket(db, b"alarm").items:
        alarm = rpcpb.AlarmMember()
        try:
            alarm.ParseFromString(raw)
        except DecodeError as exc:
            raise EtcdDBError(f"bucket alarm: bad AlarmMember: {exc}") from None
        sm.alarms.add((alarm.memberID, alarm.alarm))
    if scheduled > finished and scheduled <= sm.kv.revision:
        sm.kv.compact(scheduled)
    sm.kv.restore_events()
    return sm


def _load_auth(db: Database) -> AuthStore:
    store = AuthStore()
    auth = _bucket(db, b"auth").items
    store.enabled = auth.get(b"authEnabled") == _ENABLED
    store.flag_stored = b"authEnabled" in auth
    store.revision = 0
    if len(rev := auth.get(b"authRevision", b"")) == 8:
        (store.revision,) = _U64.unpack(rev)
    store.revision = max(store.revision, 1)  # etcd's NewAuthStore commits 1 over 0
    try:
        for raw in _bucket(db, b"authUsers").items.values():
            user = authpb.User()
            user.ParseFromString(raw)
            store.users[user.name.decode()] = User(
                user.name.decode(), user.password, set(user.roles), user.options.no_password
            )
        for raw in _bucket(db, b"authRoles").items.values():
            role = authpb.Role()
            role.ParseFromString(raw)
            perms = [Perm(p.permType, p.key, p.range_end) for p in role.keyPermission]
            store.roles[role.name.decode()] = sorted(perms, key=lambda p: (p.key, p.range_end))
    except (DecodeError, UnicodeDecodeError) as exc:
        raise EtcdDBError(f"auth buckets: bad user or role: {exc}") from None
    return store
