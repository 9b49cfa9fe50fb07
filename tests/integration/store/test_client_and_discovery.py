"""Keel's Python client against keel-store and against real etcd, same calls."""

from __future__ import annotations

import threading
import time

import pytest

from keel_store import discovery
from keel_store.client import Client, StoreError

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]


@pytest.fixture(params=["keel", "etcd"])
def client(request, make_cluster):
    cluster = make_cluster(1, binary=request.param)
    with Client(cluster.members[0].endpoint) as c:
        yield c


def test_usual_calls(client: Client) -> None:
    rev = client.put("app/a", "1")
    client.put("app/b", "2")
    assert [kv.value for kv in client.get("app/", prefix=True)] == [b"1", b"2"]
    assert client.get("app/a", revision=rev)[0].value == b"1"
    assert len(client.get("app/", prefix=True, limit=1)) == 1
    assert client.put_if_absent("app/lock", "me")
    assert not client.put_if_absent("app/lock", "you")
    kv = client.get_one("app/a")
    assert kv is not None
    assert client.compare_and_swap("app/a", kv.mod_revision, "3")
    assert not client.compare_and_swap("app/a", kv.mod_revision, "4")
    assert client.delete("app/", prefix=True) == 3
    assert client.get_one("app/a") is None
    with pytest.raises(StoreError) as exc:
        client.get("app/a", revision=10_000)
    assert exc.value.message == "etcdserver: mvcc: required revision is a future revision"
    assert client.status().version.startswith("3.4")
    assert len(client.members()) == 1


def test_watch_from_revision(client: Client) -> None:
    first = client.put("w/x", "0")
    client.put("w/x", "1")
    watch = client.watch("w/", prefix=True, start_revision=first, prev_kv=True)
    seen = []

    def consume() -> None:
        for event in watch:
            seen.append((event.type, event.kv.key, event.kv.value))
            if len(seen) == 4:
                return

    reader = threading.Thread(target=consume)
    reader.start()
    client.put("w/y", "2")
    client.delete("w/x")
    reader.join(10)
    watch.cancel()
    assert seen == [
        ("PUT", b"w/x", b"0"),
        ("PUT", b"w/x", b"1"),
        ("PUT", b"w/y", b"2"),
        ("DELETE", b"w/x", b""),
    ]


def test_leases(client: Client) -> None:
    lease = client.lease_grant(30)
    client.put("l/k", "v", lease=lease.id)
    assert client.lease_keep_alive_once(lease.id) == 30
    ttl = client.lease_time_to_live(lease.id, keys=True)
    assert list(ttl.keys) == [b"l/k"]
    assert 28 <= ttl.TTL <= 30
    client.lease_revoke(lease.id)
    assert client.get_one("l/k") is None
    assert client.lease_time_to_live(lease.id).TTL == -1


def test_discovery_registration_expires_with_its_lease(client: Client) -> None:
    record = discovery.ServiceRecord(host="10.0.0.5", port=8080)
    reg = discovery.register(client, "web", "prod.keel.local", "a1", record, ttl=2)
    assert reg.key == "/skydns/local/keel/prod/web/a1"
    time.sleep(3)  # renewed in the background: still there
    assert discovery.lookup(client, "web", "prod.keel.local") == {"a1": record}
    reg._stop.set()  # the supervisor died: no more renewals
    time.sleep(4)
    assert discovery.lookup(client, "web", "prod.keel.local") == {}
