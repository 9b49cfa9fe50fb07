"""--force-new-cluster: the entries a restarting member writes after its own log."""

from __future__ import annotations

from keel_store.mvcc import commands
from keel_store.mvcc.commands import Kind
from keel_store.mvcc.store import MemberRecord, StateMachine
from keel_store.pb import rpcpb
from keel_store.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    SnapshotMeta,
)
from keel_store.server.membership import force_new_cluster


def conf_entry(index: int, term: int, kind: ConfChangeType, node: int) -> Entry:
    return Entry(term, index, EntryType.CONF_CHANGE, ConfChange(kind, node).encode())


def replay(meta: SnapshotMeta, entries: list[Entry]) -> ConfState:
    conf = meta.conf
    for e in entries:
        if e.type is EntryType.CONF_CHANGE:
            conf = ConfChange.decode(e.data).apply(conf)
    return conf


def test_commits_the_whole_log_and_leaves_only_this_member() -> None:
    meta = SnapshotMeta(index=10, term=2, conf=ConfState(voters=(1, 2, 3)))
    log = [
        Entry(3, 11, EntryType.NORMAL, b""),
        conf_entry(12, 3, ConfChangeType.ADD_LEARNER, 4),
        Entry(4, 13, EntryType.NORMAL, b"x"),  # never known to be committed here
    ]
    me = rpcpb.Member(ID=2, name="b", peerURLs=["http://b"])
    extra, hard = force_new_cluster(me, meta, log, HardState(term=5, vote=1, commit=11))
    assert [e.index for e in extra] == [14, 15, 16, 17]
    assert {e.term for e in extra} == {5}
    assert hard == HardState(term=5, vote=1, commit=17)
    assert replay(meta, [*log, *extra]) == ConfState(voters=(2,))
    sm = StateMachine()
    for mid in (1, 2, 3, 4):
        sm.members[mid] = MemberRecord(mid, f"m{mid}", [f"http://{mid}"], mid == 4)
    commands.apply(sm, 14, extra[0].data)
    assert list(sm.members) == [2]
    assert sm.members[2].name == "m2"  # its replicated record is kept


def test_a_learner_makes_itself_a_voter_first() -> None:
    meta = SnapshotMeta(index=5, term=1, conf=ConfState(voters=(1,), learners=(9,)))
    me = rpcpb.Member(ID=9, name="l", peerURLs=["http://l"])
    extra, hard = force_new_cluster(me, meta, [], HardState(term=1, commit=5))
    assert ConfChange.decode(extra[1].data) == ConfChange(ConfChangeType.ADD_VOTER, 9)
    assert replay(meta, extra) == ConfState(voters=(9,))
    assert hard.commit == extra[-1].index == 8
    sm = StateMachine()
    sm.members[1] = MemberRecord(1, "a", ["http://a"])
    sm.members[9] = MemberRecord(9, "", ["http://l"], is_learner=True)
    commands.apply(sm, 6, extra[0].data)
    assert sm.members[9].is_learner is False
    assert Kind(extra[0].data[0]) is Kind.FORCE_NEW_CLUSTER
