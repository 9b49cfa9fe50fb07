"""Snapshots: compaction, and a lagging follower catching up through a snapshot."""

from keel_store.raft import MessageType, Role
from keel_store.raft.storage import SnapshotTemporarilyUnavailableError

from .conftest import Cluster


def compact(cluster: Cluster, nid: int) -> int:
    node = cluster.nodes[nid]
    storage = cluster.storages[nid]
    index = node.log.applied
    data = b"|".join(cluster.applied[nid])
    storage.create_snapshot(index, node.conf, data)
    storage.compact(index)
    return index


def test_lagging_follower_gets_a_snapshot_then_entries(cluster3: Cluster) -> None:
    leader = cluster3.leave_behind(30)
    index = compact(cluster3, 1)
    leader.propose(b"after")
    cluster3.settle()
    cluster3.down = set()
    cluster3.sent.clear()
    cluster3.tick(times=3)
    snaps = [m for m in cluster3.sent if m.type is MessageType.SNAPSHOT and m.to == 3]
    assert snaps
    assert snaps[0].snapshot is not None
    assert snaps[0].snapshot.meta.index == index
    follower = cluster3.nodes[3]
    assert cluster3.storages[3].snapshot().meta.index == index
    assert cluster3.storages[3].snapshot().data.endswith(b"x29")
    assert follower.log.last_index() == leader.log.last_index()
    assert follower.log.applied == leader.log.applied
    assert cluster3.applied[3][-1] == b"after"


def test_restart_after_compaction_resumes_from_the_snapshot(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    for i in range(10):
        leader.propose(f"x{i}".encode())
    cluster3.settle()
    cluster3.tick(times=2)
    index = compact(cluster3, 2)
    node = cluster3.start(2)  # applied defaults to 0: must resume after the snapshot
    assert node.log.first_index() == index + 1
    assert node.log.committed >= index
    cluster3.tick(times=2)
    assert node.role is Role.FOLLOWER
    assert node.log.last_index() == leader.log.last_index()


def test_a_snapshot_kept_elsewhere_is_loaded_when_a_follower_needs_it(cluster3: Cluster) -> None:
    """``create_snapshot(..., load=)``: the storage holds no bytes; each time the leader
    sends the snapshot it asks ``load`` for them (a member's snapshot file)."""
    leader = cluster3.leave_behind(30)
    storage = cluster3.storages[1]
    index = leader.log.applied
    kept = b"|".join(cluster3.applied[1])
    loads: list[int] = []

    def load() -> bytes:
        loads.append(index)
        return kept

    storage.create_snapshot(index, leader.conf, b"", load=load)
    storage.compact(index)
    assert storage.snapshot_meta.index == index
    assert loads == []  # the meta alone loads nothing
    cluster3.down = set()
    cluster3.tick(times=3)
    assert loads  # loaded to be sent
    assert cluster3.storages[3].snapshot().data == kept
    assert cluster3.nodes[3].log.applied == leader.log.applied
    # A snapshot installed from a leader is held in memory: no loader any more.
    cluster3.storages[1].apply_snapshot(cluster3.storages[3].snapshot())
    count = len(loads)
    assert cluster3.storages[1].snapshot().data == kept
    assert len(loads) == count


def test_a_snapshot_temporarily_unavailable_is_sent_once_it_is_ready(cluster3: Cluster) -> None:
    """``load`` raising ``SnapshotTemporarilyUnavailableError`` (the file is being read
    in a thread): the leader sends nothing to that follower and asks again on its next
    heartbeat response, as etcd raft does."""
    leader = cluster3.leave_behind(30)
    storage = cluster3.storages[1]
    index = leader.log.applied
    kept = b"|".join(cluster3.applied[1])
    asked: list[bool] = []
    ready = False

    def load() -> bytes:
        asked.append(ready)
        if not ready:
            raise SnapshotTemporarilyUnavailableError("reading")
        return kept

    storage.create_snapshot(index, leader.conf, b"", load=load)
    storage.compact(index)
    cluster3.down = set()
    cluster3.sent.clear()
    cluster3.tick(times=3)
    assert len(asked) >= 2  # asked again on later heartbeat responses
    assert not any(asked)
    assert not [m for m in cluster3.sent if m.type is MessageType.SNAPSHOT]
    assert cluster3.nodes[3].log.applied < index
    assert leader.role is Role.LEADER
    ready = True
    cluster3.tick(times=2)
    assert asked[-1]
    assert cluster3.storages[3].snapshot().data == kept
    assert cluster3.nodes[3].log.applied == leader.log.applied


def test_the_wait_for_a_snapshot_starts_when_its_last_byte_is_written(cluster3: Cluster) -> None:
    """``snapshot_sent``: the leader sends a lost snapshot again after two election
    timeouts, counted from when the transport finished writing it (a large snapshot
    still on its way must not be sent a second time); a report for another index, or
    from a follower not waiting for one, changes nothing."""
    leader = cluster3.leave_behind(30)
    index = compact(cluster3, 1)
    held: list[int] = []

    def lose_snapshots(m):  # type: ignore[no-untyped-def]
        if m.type is MessageType.SNAPSHOT:
            held.append(m.snapshot.meta.index)
            return None
        return m

    cluster3.rewrite = lose_snapshots
    cluster3.down = set()
    et = leader.config.election_ticks
    cluster3.tick(times=3)
    assert held == [index]
    cluster3.tick(times=2 * et - 3)
    leader.snapshot_sent(3, index - 1)  # not the one pending: ignored
    leader.snapshot_sent(2, index)  # node 2 waits for no snapshot: ignored
    leader.snapshot_sent(3, index)  # written out only now
    cluster3.tick(times=2 * et - 2)
    assert held == [index], "sent again before two election timeouts after the write"
    cluster3.tick(times=4)
    assert held == [index, index], "a lost snapshot is sent again"
    cluster3.rewrite = lambda m: m
    cluster3.tick(times=2 * et + 2)
    assert cluster3.nodes[3].log.applied == leader.log.applied
