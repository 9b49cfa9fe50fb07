"""Watch progress notifications (progress_notify, and progress_request) as etcd sends them."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest

from keel_store.pb import rpcgrpc, rpcpb

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]


def watch_responses(endpoint: str, requests: list[object], seconds: float) -> list[object]:
    """Send ``requests`` on one Watch stream, collect responses for ``seconds``."""
    outbox: queue.Queue[object] = queue.Queue()
    for r in requests:
        outbox.put(r)
    stop = threading.Event()

    def gen():  # type: ignore[no-untyped-def]
        while not stop.is_set():
            try:
                yield outbox.get(timeout=0.1)
            except queue.Empty:
                continue

    got: list[object] = []
    with grpc.insecure_channel(endpoint) as channel:
        stub = rpcgrpc.WatchStub(channel)
        kv = rpcgrpc.KVStub(channel)
        kv.Put(rpcpb.PutRequest(key=b"p", value=b"1"))
        stream = stub.Watch(gen())

        def read() -> None:
            try:
                for resp in stream:
                    got.append(resp)
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(seconds)
        stop.set()
        stream.cancel()
        reader.join(10)
    return got


def summary(responses: list[object]) -> list[tuple[int, bool, int, int]]:
    return [(r.watch_id, r.created, len(r.events), r.header.revision) for r in responses]


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_progress_notify_on_a_quiet_watch(make_cluster, binary) -> None:
    cluster = make_cluster(
        1, binary=binary, extra=["--experimental-watch-progress-notify-interval=1s"]
    )
    create = rpcpb.WatchRequest(
        create_request=rpcpb.WatchCreateRequest(key=b"quiet", progress_notify=True)
    )
    got = summary(watch_responses(cluster.members[0].endpoint, [create], 3.5))
    assert got[0] == (0, True, 0, 2)
    notifications = [g for g in got[1:] if g[2] == 0]
    assert len(notifications) >= 2, got
    assert all(g == (0, False, 0, 2) for g in notifications)


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_progress_request(make_cluster, binary) -> None:
    cluster = make_cluster(1, binary=binary)
    create = rpcpb.WatchRequest(create_request=rpcpb.WatchCreateRequest(key=b"x"))
    ask = rpcpb.WatchRequest(progress_request=rpcpb.WatchProgressRequest())
    got = summary(watch_responses(cluster.members[0].endpoint, [create, ask], 1.5))
    assert got == [(0, True, 0, 2), (-1, False, 0, 2)]
