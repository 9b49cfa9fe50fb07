"""Watch response fragmenting (``WatchCreateRequest.fragment``) compared with etcd.

Both servers run with ``--max-request-bytes=200000`` (fragments stay under that plus
512 KiB); a watch catching up on 12 revisions of 150 KB values and 1,188 small ones owes
~1.9 MB. It arrives in batches of at most 1,000 revisions (etcd's ``watchBatchMaxRevs``);
with ``fragment`` each batch is split under the limit and marked as etcd marks it,
without it a batch is one response.
"""

from __future__ import annotations

import queue

import grpc
import pytest

from keel_store.pb import rpcgrpc, rpcpb

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]

LIMIT = 200_000
"""--max-request-bytes; etcd fragments watch responses at this plus 512 KiB."""


def watch_shape(endpoint: str, start: int, fragment: bool, expect: int) -> list[tuple[int, bool]]:
    """(events, fragment flag) of each response until ``expect`` events arrived."""
    requests: queue.Queue[rpcpb.WatchRequest | None] = queue.Queue()
    create = rpcpb.WatchCreateRequest(
        key=b"f/", range_end=b"f0", start_revision=start, fragment=fragment
    )
    requests.put(rpcpb.WatchRequest(create_request=create))
    shape: list[tuple[int, bool]] = []
    keys: list[bytes] = []
    with grpc.insecure_channel(endpoint) as channel:
        stream = rpcgrpc.WatchStub(channel).Watch(iter(requests.get, None), timeout=30)
        for resp in stream:
            if resp.created:
                continue
            shape.append((len(resp.events), resp.fragment))
            keys.extend(e.kv.key for e in resp.events)
            if len(keys) >= expect:
                break
        requests.put(None)
        stream.cancel()
    assert keys == sorted(keys), "events out of order"
    assert len(keys) == len(set(keys)) == expect
    return shape


def scenario(endpoint: str) -> dict[str, list[tuple[int, bool]]]:
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpcgrpc.KVStub(channel)
        for i in range(12):
            kv.Put(rpcpb.PutRequest(key=b"f/%04d" % i, value=b"v" * 150_000), timeout=10)
        for i in range(12, 1200):
            kv.Put(rpcpb.PutRequest(key=b"f/%04d" % i, value=b"s"), timeout=10)
    return {
        "fragmented": watch_shape(endpoint, 2, True, 1200),
        "whole": watch_shape(endpoint, 2, False, 1200),
        "small events": watch_shape(endpoint, 14, True, 1188),
    }


def test_watch_fragments_as_etcd(make_cluster) -> None:  # type: ignore[no-untyped-def]
    flags = [f"--max-request-bytes={LIMIT}"]
    keel = make_cluster(1, extra=flags)
    etcd = make_cluster(1, binary="etcd", extra=flags)
    ours, theirs = scenario(keel.members[0].endpoint), scenario(etcd.members[0].endpoint)
    assert len(theirs["fragmented"]) > 1, theirs  # etcd did fragment
    assert theirs["fragmented"][0] == (4, True), theirs
    assert ours == theirs
