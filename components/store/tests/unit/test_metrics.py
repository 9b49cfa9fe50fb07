"""/metrics: the text exposition, etcd's families, gRPC and operation counting."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keel_store.mvcc.store import MemberRecord, StateMachine
from keel_store.pb import rpcpb
from keel_store.server import metrics, process_metrics
from keel_store.server.exposition import Family, render
from keel_store.server.grpc_metrics import CODE_NAMES, GrpcStats, instrument
from keel_store.server.stats import ETCD_DISK_BUCKETS, Histogram, ServerStats


def parse(text: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def test_buckets_are_etcds() -> None:
    # prometheus.ExponentialBuckets(0.001, 2, 14) as etcd's wal/metrics.go
    assert len(ETCD_DISK_BUCKETS) == 14
    assert ETCD_DISK_BUCKETS[0] == 0.001
    assert ETCD_DISK_BUCKETS[-1] == pytest.approx(8.192)


def test_histogram_buckets_are_le_and_cumulative() -> None:
    h = Histogram((0.001, 0.002, 0.004))
    for v in (0.0005, 0.001, 0.0015, 0.003, 10.0):
        h.observe(v)
    assert h.cumulative() == [(0.001, 2), (0.002, 3), (0.004, 4), (float("inf"), 5)]
    assert h.count == 5
    assert h.sum == pytest.approx(10.006)


def test_render_parses_with_prometheus_parser() -> None:
    h = Histogram(ETCD_DISK_BUCKETS)
    h.observe(0.0002)
    h.observe(0.02)
    text = render(
        [
            Family("b_total", "counter", "help with \\ and\nnewline").add(3),
            Family("a_gauge", "gauge", "g").add(1, (("server_id", 'x"y\\z\n'),)),
            Family("c_seconds", "histogram", "h").add_histogram(h),
        ]
    )
    lines = text.decode().splitlines()
    assert lines[0] == "# HELP a_gauge g", "families sorted by name"
    assert "# HELP b_total help with \\\\ and\\nnewline" in lines
    fams = parse(text)
    assert fams["b"].type == "counter"  # the parser strips _total from counters
    assert fams["b"].documentation == "help with \\ and\nnewline"
    assert fams["b"].samples[0].value == 3
    assert fams["a_gauge"].samples[0].labels == {"server_id": 'x"y\\z\n'}
    hist = fams["c_seconds"]
    assert hist.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 1
    assert buckets["0.016"] == 1
    assert buckets["0.032"] == 2
    assert buckets["8.192"] == 2
    assert buckets["+Inf"] == 2
    count = [s.value for s in hist.samples if s.name == "c_seconds_count"]
    assert count == [2]


def test_state_machine_counts_operations_as_etcd() -> None:
    sm = StateMachine()
    sm.put(rpcpb.PutRequest(key=b"a", value=b"1"))
    sm.put(rpcpb.PutRequest(key=b"b", value=b"1"))
    sm.range(rpcpb.RangeRequest(key=b"a"))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"b"))
    assert (sm.ops.puts, sm.ops.ranges, sm.ops.deletes, sm.ops.txns) == (2, 1, 1, 0)
    c = rpcpb.Compare
    # One compare (a range, as etcd's metricsTxnWrite counts it) and one put: a txn.
    sm.txn(
        rpcpb.TxnRequest(
            compare=[c(key=b"a", target=c.VERSION, result=c.GREATER, version=0)],
            success=[rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"c"))],
        )
    )
    assert (sm.ops.puts, sm.ops.ranges, sm.ops.txns) == (3, 2, 1)
    # A txn with a single op does not count as a txn (etcd: sum > 1).
    sm.txn(rpcpb.TxnRequest(success=[rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"d"))]))
    assert (sm.ops.puts, sm.ops.txns) == (4, 1)
    assert sm.kv.key_count == 4, "deleted b still has a history until compaction"


class _FakeServer:
    def __init__(self) -> None:
        self.registered: dict[str, dict[str, Any]] = {}
        self.generic: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered[service] = handlers


class _Ctx:
    def __init__(self, code: Any = None) -> None:
        self._code = code

    def code(self) -> Any:
        return self._code


def test_grpc_calls_and_bytes_are_counted() -> None:
    async def put(request: Any, context: Any) -> Any:
        if not request.key:
            raise grpc.aio.AbortError()
        return rpcpb.PutResponse(header=rpcpb.ResponseHeader(revision=7))

    async def watch(requests: Any, context: Any) -> Any:
        async for r in requests:
            yield r

    handlers = {
        "Put": grpc.unary_unary_rpc_method_handler(
            put,
            request_deserializer=rpcpb.PutRequest.FromString,
            response_serializer=rpcpb.PutResponse.SerializeToString,
        ),
        "Watch": grpc.stream_stream_rpc_method_handler(
            watch,
            request_deserializer=rpcpb.WatchRequest.FromString,
            response_serializer=rpcpb.WatchResponse.SerializeToString,
        ),
    }
    server, stats = _FakeServer(), GrpcStats()
    counted = instrument(server, stats)
    counted.add_generic_rpc_handlers(())
    counted.add_registered_method_handlers("etcdserverpb.KV", handlers)
    assert len(server.generic) == 1
    h = server.registered["etcdserverpb.KV"]["Put"]
    data = rpcpb.PutRequest(key=b"k", value=b"v").SerializeToString()
    req = h.request_deserializer(data)
    resp = asyncio.run(h.unary_unary(req, _Ctx()))
    out = h.response_serializer(resp)
    assert stats.received_bytes == len(data)
    assert stats.sent_bytes == len(out) > 0
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(h.unary_unary(rpcpb.PutRequest(), _Ctx(grpc.StatusCode.INVALID_ARGUMENT)))

    w = server.registered["etcdserverpb.KV"]["Watch"]

    async def drive() -> list[Any]:
        async def requests() -> Any:
            yield 1
            yield 2

        return [x async for x in w.stream_stream(requests(), _Ctx())]

    assert asyncio.run(drive()) == [1, 2]
    by_method = {m.method: m for m in stats.methods}
    put_stats = by_method["Put"]
    assert (put_stats.service, put_stats.type, put_stats.started) == ("etcdserverpb.KV", "unary", 2)
    assert put_stats.handled["OK"] == 1
    assert put_stats.handled["InvalidArgument"] == 1
    assert set(put_stats.handled) == set(CODE_NAMES.values()), "every code pre-set, as etcd"
    assert by_method["Watch"].type == "bidi_stream"
    assert by_method["Watch"].handled["OK"] == 1


def test_process_metrics_are_plausible() -> None:
    fams = parse(render(process_metrics.collect()))
    value = {name: f.samples[0].value for name, f in fams.items()}
    assert value["process_resident_memory_bytes"] > 1 << 20
    assert value["process_open_fds"] >= 3
    assert value["process_cpu_seconds"] > 0  # the parser strips _total
    assert time.time() - 3600 * 24 < value["process_start_time_seconds"] <= time.time()
    assert fams["process_cpu_seconds"].type == "counter"


class _Hub:
    """Two watchers, one of them slow."""

    slow = 1

    def __len__(self) -> int:
        return 2


def _fake_node(leader: int, me: int) -> Any:
    sm = StateMachine()
    sm.members[me] = MemberRecord(me, "m0", [])
    sm.put(rpcpb.PutRequest(key=b"a", value=b"1"))
    stats = ServerStats()
    stats.leader_changes = 2
    stats.wal_fsync.observe(0.0004)
    return SimpleNamespace(
        sm=sm,
        ops=sm.ops,
        stats=stats,
        member_id=me,
        leader_id=leader,
        is_leader=leader == me,
        commit_index=9,
        applied_index=8,
        pending_proposals=1,
        config=SimpleNamespace(quota_bytes=1 << 30),
        disk_bytes=lambda: 4096,
        transport=SimpleNamespace(sent_bytes={0xAB: 10}, received_bytes={0xAB: 20}),
        hub=_Hub(),
    )


@pytest.mark.parametrize(("leader", "is_leader"), [(0x1F, 1), (0x2, 0), (0, 0)])
def test_exposition_from_a_member(leader: int, is_leader: int) -> None:
    node = _fake_node(leader, 0x1F)
    gs = GrpcStats()
    instrument(_FakeServer(), gs).add_registered_method_handlers(
        "etcdserverpb.KV",
        {"Range": grpc.unary_unary_rpc_method_handler(lambda r, c: r)},
    )
    fams = parse(metrics.exposition(node, gs))
    v = {name: f.samples[0].value for name, f in fams.items() if f.samples}
    assert v["etcd_server_is_leader"] == is_leader
    assert v["etcd_server_has_leader"] == (1 if leader else 0)
    assert v["etcd_server_leader_changes_seen"] == 2
    assert v["etcd_server_proposals_committed_total"] == 9  # a gauge in etcd: name kept
    assert v["etcd_server_proposals_applied_total"] == 8
    assert v["etcd_server_proposals_pending"] == 1
    assert v["etcd_mvcc_put"] == 1
    assert v["etcd_debugging_mvcc_keys_total"] == 1
    assert v["etcd_debugging_mvcc_watcher_total"] == 2
    assert v["etcd_debugging_mvcc_slow_watcher_total"] == 1
    assert v["etcd_mvcc_db_total_size_in_bytes"] == 4096
    assert fams["etcd_server_id"].samples[0].labels == {"server_id": "1f"}
    assert fams["etcd_network_peer_sent_bytes"].samples[0].labels == {"To": "ab"}
    assert fams["etcd_network_peer_received_bytes"].samples[0].labels == {"From": "ab"}
    fsync = fams["etcd_disk_wal_fsync_duration_seconds"]
    assert fsync.type == "histogram"
    assert [s.value for s in fsync.samples if s.name.endswith("_count")] == [1]
    handled = fams["grpc_server_handled"].samples
    assert len(handled) == len(CODE_NAMES)
    assert set(handled[0].labels) == {"grpc_code", "grpc_method", "grpc_service", "grpc_type"}
