"""Leases, watches and snapshots of the state machine."""

from __future__ import annotations

import pytest

from keel_store.mvcc import commands, errors, snapshot
from keel_store.mvcc.keyspace import DELETE, PUT, Event, prefix_end
from keel_store.mvcc.lessor import Lessor
from keel_store.mvcc.store import StateMachine
from keel_store.mvcc.watch import Watcher, WatchHub
from keel_store.pb import authpb, rpcpb


def grant(sm: StateMachine, lease_id: int, ttl: int = 10) -> None:
    sm.lease_grant(rpcpb.LeaseGrantRequest(ID=lease_id, TTL=ttl))


def test_lease_revoke_deletes_attached_keys_in_one_revision() -> None:
    sm = StateMachine()
    grant(sm, 7)
    sm.put(rpcpb.PutRequest(key=b"a", value=b"1", lease=7))
    sm.put(rpcpb.PutRequest(key=b"b", value=b"1", lease=7))
    sm.put(rpcpb.PutRequest(key=b"c", value=b"1", lease=7))
    sm.put(rpcpb.PutRequest(key=b"c", value=b"2"))  # moved off the lease
    sm.lease_revoke(rpcpb.LeaseRevokeRequest(ID=7))
    assert sm.kv.revision == 6
    left = sm.range(rpcpb.RangeRequest(key=b"\0", range_end=b"\0"))
    assert [kv.key for kv in left.kvs] == [b"c"]
    with pytest.raises(errors.EtcdError) as exc:
        sm.lease_revoke(rpcpb.LeaseRevokeRequest(ID=7))
    assert exc.value == errors.LEASE_NOT_FOUND


def test_lease_grant_errors() -> None:
    sm = StateMachine()
    grant(sm, 5)
    with pytest.raises(errors.EtcdError) as exc:
        grant(sm, 5)
    assert exc.value == errors.LEASE_EXISTS
    with pytest.raises(errors.EtcdError) as exc:
        grant(sm, 6, ttl=9_000_000_001)
    assert exc.value == errors.LEASE_TTL_TOO_LARGE


def test_ignore_lease_keeps_the_lease() -> None:
    sm = StateMachine()
    grant(sm, 9)
    sm.put(rpcpb.PutRequest(key=b"k", value=b"1", lease=9))
    sm.put(rpcpb.PutRequest(key=b"k", value=b"2", ignore_lease=True))
    assert sm.range(rpcpb.RangeRequest(key=b"k")).kvs[0].lease == 9
    sm.lease_revoke(rpcpb.LeaseRevokeRequest(ID=9))
    assert not sm.range(rpcpb.RangeRequest(key=b"k")).kvs


def test_lessor_deadlines() -> None:
    lessor = Lessor()
    lessor.grant(1, 5, now=100.0)
    lessor.grant(2, 10, now=100.0)
    assert lessor.remaining(1, 101.2) == 4
    assert lessor.expired(104.9) == []
    assert lessor.expired(105.0) == [1]
    assert lessor.renew(1, 104.0) == 5
    assert lessor.expired(108.0) == []
    lessor.promote(200.0)
    assert lessor.remaining(2, 200.0) == 10
    lessor.forget(1)
    assert lessor.renew(1, 0.0) is None
    assert lessor.remaining(1, 0.0) == -1


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[int, bytes, int, bool]] = []

    def __call__(self, watcher: Watcher, events: list[Event]) -> None:
        for e in events:
            self.got.append((e.type, e.kv.key, e.kv.mod_revision, e.HasField("prev_kv")))


def hub_with_store() -> tuple[StateMachine, WatchHub]:
    sm = StateMachine()
    hub = WatchHub(sm.kv)
    sm.listeners.append(hub.notify)
    return sm, hub


def test_watch_from_now_and_from_the_past() -> None:
    sm, hub = hub_with_store()
    sm.put(rpcpb.PutRequest(key=b"k", value=b"1"))  # 2
    sm.put(rpcpb.PutRequest(key=b"other", value=b"1"))  # 3
    now, past = Recorder(), Recorder()
    assert hub.watch(Watcher(1, b"k", b"", now), 0) == 0
    assert hub.watch(Watcher(2, b"k", b"", past, prev_kv=True), 1) == 0
    assert past.got == [(PUT, b"k", 2, False)]
    sm.put(rpcpb.PutRequest(key=b"k", value=b"2"))  # 4
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k"))  # 5
    assert now.got == [(PUT, b"k", 4, False), (DELETE, b"k", 5, False)]
    assert past.got[1:] == [(PUT, b"k", 4, True), (DELETE, b"k", 5, True)]


def test_watch_prefix_filters_future_start_and_cancel() -> None:
    sm, hub = hub_with_store()
    rec, future = Recorder(), Recorder()
    w = Watcher(1, b"p/", prefix_end(b"p/"), rec, no_delete=True)
    hub.watch(w, 0)
    hub.watch(Watcher(2, b"p/", prefix_end(b"p/"), future), 4)
    sm.put(rpcpb.PutRequest(key=b"p/a", value=b"1"))  # 2
    sm.put(rpcpb.PutRequest(key=b"q", value=b"1"))  # 3
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"p/a"))  # 4
    sm.put(rpcpb.PutRequest(key=b"p/b", value=b"1"))  # 5
    assert rec.got == [(PUT, b"p/a", 2, False), (PUT, b"p/b", 5, False)]
    assert future.got == [(DELETE, b"p/a", 4, False), (PUT, b"p/b", 5, False)]
    hub.cancel(w)
    sm.put(rpcpb.PutRequest(key=b"p/c", value=b"1"))
    assert len(rec.got) == 2
    assert len(hub) == 1


def test_watch_on_compacted_revision_is_refused() -> None:
    sm, hub = hub_with_store()
    for v in (b"1", b"2", b"3"):
        sm.put(rpcpb.PutRequest(key=b"k", value=v))
    sm.compact(rpcpb.CompactionRequest(revision=3))
    assert hub.watch(Watcher(1, b"k", b"", Recorder()), 2) == 3
    rec = Recorder()
    assert hub.watch(Watcher(2, b"k", b"", rec), 3) == 0
    assert [r[2] for r in rec.got] == [3, 4], "the compact revision itself stays watchable"


def test_txn_events_share_a_revision_for_watchers() -> None:
    sm, hub = hub_with_store()
    rec = Recorder()
    hub.watch(Watcher(1, b"\0", b"\0", rec), 0)
    sm.txn(
        rpcpb.TxnRequest(
            success=[
                rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"b", value=b"1")),
                rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"a", value=b"1")),
            ]
        )
    )
    assert rec.got == [(PUT, b"b", 2, False), (PUT, b"a", 2, False)]


def build_state() -> StateMachine:
    sm = StateMachine()
    grant(sm, 3)
    sm.put(rpcpb.PutRequest(key=b"a", value=b"1"))
    sm.put(rpcpb.PutRequest(key=b"a", value=b"2", lease=3))
    sm.put(rpcpb.PutRequest(key=b"b", value=b"x"))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"b"))
    sm.put(rpcpb.PutRequest(key=b"c", value=b"\xff\x00"))
    sm.compact(rpcpb.CompactionRequest(revision=3))
    sm.applied_index = 42
    return sm


def test_snapshot_round_trip() -> None:
    sm = build_state()
    data = snapshot.save(sm)
    back = snapshot.restore(data)
    assert snapshot.save(back) == data
    assert (back.kv.revision, back.kv.compact_revision, back.applied_index) == (6, 3, 42)
    assert back.leases[3].keys == {b"a"}
    assert snapshot.hash_kv(back, 6) == snapshot.hash_kv(sm, 6)
    assert snapshot.hash_kv(back, 6) != snapshot.hash_kv(back, 4)
    hub = WatchHub(back.kv)
    rec = Recorder()
    hub.watch(Watcher(1, b"\0", b"\0", rec), 3)
    # From the compact revision: its put (a@3, without prev_kv) too, as etcd replays it.
    assert [(r[1], r[2]) for r in rec.got] == [(b"a", 3), (b"b", 4), (b"b", 5), (b"c", 6)]
    back.lease_revoke(rpcpb.LeaseRevokeRequest(ID=3))
    assert not back.range(rpcpb.RangeRequest(key=b"a")).kvs


def test_snapshot_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="bad magic"):
        snapshot.restore(b"nope")
    data = snapshot.save(build_state())
    with pytest.raises(ValueError, match="corrupt snapshot"):
        snapshot.restore(data[:-3])


def test_commands_round_trip_and_apply() -> None:
    sm = StateMachine()
    data = commands.encode(commands.Kind.PUT, 99, rpcpb.PutRequest(key=b"k", value=b"v"))
    rid, resp = commands.apply(sm, 1, data)
    assert rid == 99
    assert resp.header.revision == 2
    rid, resp = commands.apply(
        sm, 2, commands.encode(commands.Kind.LEASE_REVOKE, 5, rpcpb.LeaseRevokeRequest(ID=1))
    )
    assert resp == errors.LEASE_NOT_FOUND
    assert sm.applied_index == 2
    assert commands.apply(sm, 3, b"") == (0, None)
    with pytest.raises(ValueError, match="corrupt command"):
        commands.decode(bytes([200]) + bytes(8))


def test_nospace_alarm_caps_writes_but_not_deletes() -> None:
    sm = StateMachine()
    put = commands.encode(commands.Kind.PUT, 1, rpcpb.PutRequest(key=b"k", value=b"v" * 100))
    commands.apply(sm, 1, put)
    size = sm.kv.size
    assert size >= 101
    alarm = rpcpb.AlarmRequest(action=rpcpb.AlarmRequest.ACTIVATE, memberID=9, alarm=rpcpb.NOSPACE)
    commands.apply(sm, 2, commands.encode(commands.Kind.ALARM, 2, alarm))
    assert sm.no_space
    assert commands.apply(sm, 3, put)[1] == errors.NO_SPACE
    grant = commands.encode(commands.Kind.LEASE_GRANT, 4, rpcpb.LeaseGrantRequest(ID=1, TTL=5))
    assert commands.apply(sm, 4, grant)[1] == errors.NO_SPACE
    delete = commands.encode(commands.Kind.DELETE_RANGE, 5, rpcpb.DeleteRangeRequest(key=b"k"))
    assert commands.apply(sm, 5, delete)[1].deleted == 1
    sm.compact(rpcpb.CompactionRequest(revision=sm.kv.revision))
    assert sm.kv.size == 0, "compaction frees the deleted key's versions and tombstone"
    listed = sm.alarm(rpcpb.AlarmRequest(action=rpcpb.AlarmRequest.GET))
    assert [(a.memberID, a.alarm) for a in listed.alarms] == [(9, rpcpb.NOSPACE)]
    assert snapshot.restore(snapshot.save(sm)).no_space
    disarm = rpcpb.AlarmRequest(
        action=rpcpb.AlarmRequest.DEACTIVATE, memberID=9, alarm=rpcpb.NOSPACE
    )
    commands.apply(sm, 6, commands.encode(commands.Kind.ALARM, 6, disarm))
    assert not sm.no_space
    assert commands.apply(sm, 7, put)[1].header.revision == 4


def test_in_use_counts_the_records_beside_the_keys() -> None:
    """etcd's dbSizeInUse is never 0 (its bbolt pages hold members, meta, auth):
    keel-store's counts the member, lease, user and role records besides the versions
    (before 2026-12-07 only the versions: 0 on an empty store, so left out of Status)."""
    sm = StateMachine()
    assert sm.in_use_bytes() == 0  # nothing at all, not even a member
    sm.member_add(rpcpb.Member(ID=7, name="m0", peerURLs=["http://127.0.0.1:2380"]))
    member = sm.in_use_bytes()
    assert member > len("m0http://127.0.0.1:2380")
    sm.lease_grant(rpcpb.LeaseGrantRequest(ID=1, TTL=60))
    lease = sm.in_use_bytes()
    assert lease > member
    sm.auth.apply(rpcpb.AuthUserAddRequest(name="alice", password="pw"))
    sm.auth.apply(rpcpb.AuthRoleAddRequest(name="r"))
    sm.auth.apply(
        rpcpb.AuthRoleGrantPermissionRequest(
            name="r", perm=authpb.Permission(permType=authpb.Permission.READ, key=b"a/")
        )
    )
    auth = sm.in_use_bytes()
    assert auth > lease
    sm.put(rpcpb.PutRequest(key=b"k", value=b"v" * 100))
    assert sm.in_use_bytes() - auth == sm.kv.size >= 101
    sm.lease_revoke(rpcpb.LeaseRevokeRequest(ID=1))
    assert sm.in_use_bytes() == auth - (lease - member) + sm.kv.size
