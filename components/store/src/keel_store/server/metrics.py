"""``GET /metrics``: etcd 3.4's metric families, with etcd's names, types, labels and HELP.

Gauges are read from the member's state when scraped (leader, commit and applied
index, pending proposals, key space, sizes); counters and histograms come from what
the member counts as it runs (``node.stats``, ``node.ops``, the peer transport,
``GrpcStats``). docs/store.md (Metrics) says what each measures in keel-store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel_store.server import process_metrics
from keel_store.server.exposition import Family, render
from keel_store.server.other_services import CLUSTER_VERSION, ETCD_VERSION

if TYPE_CHECKING:
    from keel_store.server.grpc_metrics import GrpcStats
    from keel_store.server.node import StoreNode


def _gauge(name: str, help_text: str, value: float) -> Family:
    return Family(name, "gauge", help_text).add(value)


def _counter(name: str, help_text: str, value: float) -> Family:
    return Family(name, "counter", help_text).add(value)


def server_families(node: StoreNode) -> list[Family]:
    """``etcd_server_*`` and ``etcd_cluster_version``."""
    me = node.sm.members.get(node.member_id)
    return [
        _gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            int(node.leader_id != 0),
        ),
        _gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            int(node.is_leader),
        ),
        _gauge(
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            int(me is not None and me.is_learner),
        ),
        _counter(
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            node.stats.leader_changes,
        ),
        _counter(
            "etcd_server_heartbeat_send_failures_total",
            "The total number of leader heartbeat send failures (likely overloaded from slow"
            " disk).",
            node.stats.heartbeat_send_failures,
        ),
        # etcd sets these two gauges to the commit and applied index.
        _gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            node.commit_index,
        ),
        _gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            node.applied_index,
        ),
        _gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            node.pending_proposals,
        ),
        _counter(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            node.stats.proposals_failed,
        ),
        Family(
            "etcd_server_id",
            "gauge",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        ).add(1, (("server_id", f"{node.member_id:x}"),)),
        Family(
            "etcd_server_version",
            "gauge",
            "Which version is running. 1 for 'server_version' label with current version.",
        ).add(1, (("server_version", ETCD_VERSION),)),
        Family(
            "etcd_cluster_version",
            "gauge",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
        ).add(1, (("cluster_version", ".".join(CLUSTER_VERSION.split(".")[:2])),)),
        _gauge(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            node.config.quota_bytes,
        ),
        _counter(
            "etcd_server_health_success",
            "The total number of successful health checks",
            node.stats.health_success,
        ),
        _counter(
            "etcd_server_health_failures",
            "The total number of failed health checks",
            node.stats.health_failures,
        ),
        _counter(
            "etcd_debugging_server_lease_expired_total",
            "The total number of expired leases.",
            node.stats.leases_expired,
        ),
    ]


def mvcc_families(node: StoreNode) -> list[Family]:
    """``etcd_mvcc_*``, ``etcd_debugging_mvcc_*`` and the lease counters."""
    kv, ops, stats = node.sm.kv, node.ops, node.stats
    db_size = node.disk_bytes()
    physical = "Total size of the underlying database physically allocated in bytes."
    out = [
        _gauge("etcd_mvcc_db_total_size_in_bytes", physical, db_size),
        _gauge("etcd_debugging_mvcc_db_total_size_in_bytes", physical, db_size),
        _gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            node.sm.in_use_bytes(),
        ),
        _gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", kv.key_count),
        _gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", len(node.hub)),
        _gauge(
            "etcd_debugging_mvcc_slow_watcher_total",
            "Total number of unsynced slow watchers.",
            node.hub.slow,
        ),
        _gauge(
            "etcd_debugging_mvcc_current_revision", "The current revision of store.", kv.revision
        ),
        _gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            kv.compact_revision,
        ),
        _counter(
            "etcd_debugging_lease_granted_total",
            "The total number of granted leases.",
            stats.leases_granted,
        ),
        _counter(
            "etcd_debugging_lease_revoked_total",
            "The total number of revoked leases.",
            stats.leases_revoked,
        ),
        _counter(
            "etcd_debugging_lease_renewed_total",
            "The number of renewed leases seen by the leader.",
            stats.leases_renewed,
        ),
    ]
    for what, value in (
        ("put", ops.puts),
        ("delete", ops.deletes),
        ("range", ops.ranges),
        ("txn", ops.txns),
    ):
        help_text = f"Total number of {what}s seen by this member."
        out.append(_counter(f"etcd_mvcc_{what}_total", help_text, value))
        out.append(_counter(f"etcd_debugging_mvcc_{what}_total", help_text, value))
    return out


def disk_families(node: StoreNode) -> list[Family]:
    return [
        Family(
            "etcd_disk_wal_fsync_duration_seconds",
            "histogram",
            "The latency distributions of fsync called by WAL.",
        ).add_histogram(node.stats.wal_fsync),
        Family(
            "etcd_debugging_snap_save_total_duration_seconds",
            "histogram",
            "The total latency distributions of save called by snapshot.",
        ).add_histogram(node.stats.snapshot_save),
    ]


def network_families(node: StoreNode, grpc_stats: GrpcStats | None) -> list[Family]:
    sent = Family(
        "etcd_network_peer_sent_bytes_total", "counter", "The total number of bytes sent to peers."
    )
    for peer, n in sorted(node.transport.sent_bytes.items(), key=lambda i: f"{i[0]:x}"):
        sent.add(n, (("To", f"{peer:x}"),))
    received = Family(
        "etcd_network_peer_received_bytes_total",
        "counter",
        "The total number of bytes received from peers.",
    )
    for peer, n in sorted(node.transport.received_bytes.items(), key=lambda i: f"{i[0]:x}"):
        received.add(n, (("From", f"{peer:x}"),))
    # Go's client leaves out a vector family that has no child yet.
    out = [f for f in (sent, received) if f.samples]
    if grpc_stats is None:
        return out
    out += [
        _counter(
            "etcd_network_client_grpc_sent_bytes_total",
            "The total number of bytes sent to grpc clients.",
            grpc_stats.sent_bytes,
        ),
        _counter(
            "etcd_network_client_grpc_received_bytes_total",
            "The total number of bytes received from grpc clients.",
            grpc_stats.received_bytes,
        ),
    ]
    started = Family(
        "grpc_server_started_total", "counter", "Total number of RPCs started on the server."
    )
    handled = Family(
        "grpc_server_handled_total",
        "counter",
        "Total number of RPCs completed on the server, regardless of success or failure.",
    )
    handling = Family(
        "grpc_server_handling_seconds",
        "histogram",
        "Histogram of response latency (seconds) of gRPC that had been application-level"
        " handled by the server.",
    )
    streams = 0
    for m in sorted(grpc_stats.methods, key=lambda m: (m.method, m.service)):
        labels = (("grpc_method", m.method), ("grpc_service", m.service), ("grpc_type", m.type))
        started.add(m.started, labels)
        for code, n in sorted(m.handled.items()):
            handled.add(n, (("grpc_code", code), *labels))
        if m.handling is not None:
            handling.add_histogram(m.handling, labels)
        if (m.service, m.method) == ("etcdserverpb.Watch", "Watch"):
            streams = m.started - sum(m.handled.values())
    watch_streams = _gauge(
        "etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.", streams
    )
    timed = [handling] if grpc_stats.handling_time else []
    return [*out, started, handled, *timed, watch_streams]


def exposition(node: StoreNode, grpc_stats: GrpcStats | None = None) -> bytes:
    """The body of ``GET /metrics``."""
    return render(
        [
            *server_families(node),
            *mvcc_families(node),
            *disk_families(node),
            *network_families(node, grpc_stats),
            *process_metrics.collect(),
        ]
    )
