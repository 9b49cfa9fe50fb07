"""When a member takes its next snapshot: members of one cluster take theirs at
different indexes.

etcd snapshots every ``--snapshot-count`` applied entries, at the same indexes on every
member, which costs it little (its key space is already on disk in bbolt). A keel-store
snapshot forks the member and serializes its key space (``server.snapshotter``): the
fork, the copy-on-write faults of the parent afterwards and the child's CPU slow the
member down for a second or so. When every member of a 3-member cluster did that at
the same index, the leader and both followers were slow at once, and so was every write
then (it needs the leader and one follower). Measured with ``etcdctl check perf
--load=l`` on three members of one machine (two cores), three runs each: slowest request
0.39-0.49 s with the snapshots at the same indexes, 0.21-0.27 s with the members' snapshots
apart (0.09 s in a run without snapshots).

So each voting member gets a phase: with ``n`` voters, the member ``r``-th in ID order
snapshots at the indexes ``i`` where ``(i + r * count // n) % count == 0``, once the
previous snapshot is behind it. The interval stays at most ``count`` entries, as
etcd's; a member's first snapshot (and the first after a membership change moves its
phase) comes earlier. A single member, and a learner, keep etcd's indexes (phase 0).
"""

from __future__ import annotations

from collections.abc import Iterable


def phase(member: int, voters: Iterable[int], count: int) -> int:
    """How many entries before etcd's indexes ``member`` takes its snapshots: the voters'
    phases are spread evenly over ``count``, in the order of their IDs."""
    ids = sorted(set(voters))
    if member not in ids or count <= 1:
        return 0
    return ids.index(member) * count // len(ids)


def due(applied: int, last: int, count: int, offset: int) -> bool:
    """Whether a member with ``offset`` (:func:`phase`) whose last snapshot is at index
    ``last`` takes one now, having applied up to ``applied``: at the first index of its
    phase after ``last``, and never more than ``count`` entries after it."""
    if applied - last >= count:
        return True
    return count > 0 and applied >= last + count - (last + offset) % count


def bytes_due(since: int, base: int, limit: int, offset: int = 0) -> bool:
    """Whether a member that applied ``since`` bytes of entries since its last snapshot,
    whose key space was ``base`` bytes at that snapshot, takes one now under
    ``--experimental-snapshot-bytes=limit`` (0: never), ``offset`` bytes early
    (:func:`phase` of ``limit``, for its first one)."""
    return limit > 0 and since >= max(limit, base) - offset
