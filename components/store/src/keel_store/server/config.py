"""What a member needs to run (mapped from etcd's flags by the daemon)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel_store.mvcc.validate import DEFAULT_MAX_REQUEST_BYTES
from keel_store.server.members import Cluster


@dataclass
class NodeConfig:
    """One member's settings."""

    name: str
    data_dir: Path
    cluster: Cluster
    wal_dir: Path | None = None
    """``--wal-dir``: the WAL in a directory of its own (default ``<data-dir>/member/wal``)."""
    pre_vote: bool = True
    """``--pre-vote``: campaign only after a pre-vote a majority would grant (a member
    cut off and back does not depose a working leader; early campaigns after a lost
    leader connection need it)."""
    strict_reconfig_check: bool = True
    """``--strict-reconfig-check``: refuse membership changes that could cost the quorum
    (etcd's mayAddMember/mayRemoveMember/mayPromoteMember)."""
    force_new_cluster: bool = False
    """``--force-new-cluster``: on a restart, commit the whole local log and leave this
    member alone in the configuration (through entries in the log)."""
    initial_election_tick_advance: bool = True
    """``--initial-election-tick-advance``: see :meth:`StoreNode.start`."""
    max_snapshots: int = 2
    """``--max-snapshots``: snapshot files kept (the WAL is kept back to the oldest)."""
    max_wals: int = 5
    """``--max-wals``: WAL segments kept when no longer needed (0: all of them)."""
    heartbeat_ms: int = 100
    election_ms: int = 1000
    snapshot_count: int = 100_000
    snapshot_bytes: int = 0
    """``--experimental-snapshot-bytes``: also snapshot once the entries applied since
    the last snapshot reach this many bytes, or the key space's size then if larger
    (``server.snapshot_schedule``; 0: by count only, as etcd)."""
    request_timeout: float = 7.0
    quota_bytes: int = 2 << 30
    fsync: bool = True
    background_snapshots: bool = False
    """Serialize snapshots in a forked child (``server.snapshotter``), not on the loop."""
    join_existing: bool = False
    """``--initial-cluster-state=existing``: join a running cluster (after MemberAdd)."""
    listen_peer_url: str = ""
    """Where to accept peers (default: this member's URL in the cluster)."""
    peer_server_ssl: Any = None
    """ssl.SSLContext for accepting peers (peer TLS), or None."""
    peer_client_ssl: Any = None
    """ssl.SSLContext for dialing peers (peer TLS), or None."""
    token_provider: Any = None
    """``--auth-token``: a :class:`~keel_store.server.tokens.TokenProvider` (None: simple)."""
    bcrypt_cost: int = 10
    """``--bcrypt-cost``: the work factor of password hashes (4-31, etcd's default 10)."""
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    """``--max-request-bytes``: a larger proposal is refused ("request is too large")."""
    lease_checkpoint_interval: float = 0.0
    """Seconds between checkpoints of a long lease's remaining TTL (0: none; etcd's
    ``--experimental-enable-lease-checkpoint`` checkpoints every 300 s)."""
    warn_apply_seconds: float = 0.1
    """``--experimental-warning-apply-duration``: log an entry whose apply took longer."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def min_lease_ttl(self) -> int:
        """etcd: ``ceil(1.5 * election timeout)`` in seconds (2 s by default)."""
        return -(-3 * self.election_ms // 2000)
