"""Counters a member keeps for ``/metrics``: plain ints and lists, no locks.

Everything here is updated on the event loop only (the one WAL fsync that runs in a
worker thread is timed there but recorded back on the loop), so a count is one
attribute increment; the exposition (``keel_store.server.metrics``) reads them when
scraped. Histograms keep per-bucket counts and are made cumulative at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """Upper bounds as Go's ``prometheus.ExponentialBuckets(start, factor, count)``."""
    return tuple(start * factor**i for i in range(count))


ETCD_DISK_BUCKETS = exponential_buckets(0.001, 2, 14)
"""etcd's buckets for WAL fsync and backend commit: 1 ms .. 8.192 s."""


class Histogram:
    """A Prometheus histogram's state: counts per bucket (+Inf last), sum, count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bound's bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) with +Inf last, as exposed."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class ServerStats:
    """What a member counts as it runs (etcd's ``etcdserver``, ``wal``, ``lease``)."""

    __slots__ = (
        "health_failures",
        "health_success",
        "heartbeat_send_failures",
        "leader_changes",
        "leases_expired",
        "leases_granted",
        "leases_renewed",
        "leases_revoked",
        "proposals_failed",
        "snapshot_save",
        "wal_fsync",
    )

    def __init__(self) -> None:
        self.leader_changes = 0
        self.heartbeat_send_failures = 0
        self.health_success = 0
        self.health_failures = 0
        self.proposals_failed = 0
        self.wal_fsync = Histogram(ETCD_DISK_BUCKETS)
        self.snapshot_save = Histogram(ETCD_DISK_BUCKETS)
        self.leases_granted = 0
        self.leases_revoked = 0
        self.leases_renewed = 0
        self.leases_expired = 0
