"""Watch responses serialized by the service: byte for byte what protobuf would send."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from keel_store.pb import mvccpb, rpcpb
from keel_store.server.kv_service import WatchService


def _node(revision: int, term: int = 3) -> Any:
    return SimpleNamespace(
        cluster=SimpleNamespace(cluster_id=0xC1),
        member_id=0xABCDEF,
        term=term,
        sm=SimpleNamespace(kv=SimpleNamespace(revision=revision)),
    )


def _events(n: int, prev: bool = False) -> list[Any]:
    out = []
    for i in range(n):
        kv = mvccpb.KeyValue(key=b"k%d" % i, value=b"v" * (i * 40), mod_revision=10 + i)
        ev = mvccpb.Event(type=mvccpb.Event.PUT, kv=kv)
        if prev:
            ev.prev_kv.CopyFrom(mvccpb.KeyValue(key=b"k%d" % i, value=b"old"))
        out.append(ev)
    return out


def _reference(node: Any, watch_id: int, events: list[Any]) -> bytes:
    resp = rpcpb.WatchResponse(watch_id=watch_id, events=events)
    resp.header.cluster_id = node.cluster.cluster_id
    resp.header.member_id = node.member_id
    resp.header.raft_term = node.term
    resp.header.revision = node.sm.kv.revision
    return bytes(resp.SerializeToString())


def test_encoded_equals_the_message_serialized() -> None:
    node = _node(revision=12)
    service = WatchService(node, progress_interval=600.0)
    plain, with_prev = _events(3), _events(2, prev=True)
    for watch_id in (0, 1, 127, 128, 300000):
        for events in (plain, with_prev, plain):  # the same list again: from the cache
            assert service._encoded(watch_id, events) == _reference(node, watch_id, events)
    node.sm.kv.revision = 13  # a new revision: a new header
    node.term = 4
    assert service._encoded(5, plain) == _reference(node, 5, plain)
    parsed = rpcpb.WatchResponse.FromString(service._encoded(5, plain))
    assert parsed.watch_id == 5
    assert parsed.header.revision == 13
    assert [e.kv.key for e in parsed.events] == [b"k0", b"k1", b"k2"]


def test_a_new_list_with_other_events_is_not_served_from_the_cache() -> None:
    node = _node(revision=20)
    service = WatchService(node, progress_interval=600.0)
    first = _events(1)
    service._encoded(1, first)
    second = _events(2)
    assert service._encoded(1, second) == _reference(node, 1, second)
