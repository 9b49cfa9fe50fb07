"""Three keel-store members on loopback, driven by etcdctl and the Python client."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from keel_store.client import Client, StoreError

from .conftest import etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]


def test_etcdctl_across_members(make_cluster) -> None:
    cluster = make_cluster(3)
    a, b, c = (m.endpoint for m in cluster.members)
    etcdctl(a, "put", "x", "1")
    assert etcdctl(b, "get", "x", "--print-value-only").stdout.strip() == "1"
    etcdctl(c, "put", "x", "2")
    assert etcdctl(a, "get", "x", "--print-value-only").stdout.strip() == "2"
    members = json.loads(etcdctl(a, "member", "list", "-w", "json").stdout)["members"]
    assert sorted(m["name"] for m in members) == ["m0", "m1", "m2"]
    assert all(m["clientURLs"] for m in members)
    status = json.loads(etcdctl(a, "endpoint", "status", "--cluster", "-w", "json").stdout)
    leaders = {s["Status"]["leader"] for s in status}
    assert len(status) == 3
    assert len(leaders) == 1
    lease = etcdctl(b, "lease", "grant", "20").stdout.split()[1]
    etcdctl(c, "put", "--lease", lease, "leased", "v")
    assert "TTL(20)" in etcdctl(a, "lease", "keep-alive", "--once", lease).stdout
    etcdctl(c, "lease", "revoke", lease)
    assert etcdctl(a, "get", "leased").stdout == ""
    r = etcdctl(b, "lock", "cl", "echo", "locked")
    assert "locked" in r.stdout


def test_kill9_leader_under_load_loses_no_acknowledged_write(make_cluster) -> None:
    cluster = make_cluster(3)
    acked: dict[str, str] = {}
    stop = threading.Event()
    errors: list[str] = []

    def writer(wid: int) -> None:
        with Client([m.endpoint for m in cluster.members], timeout=3) as client:
            i = 0
            while not stop.is_set():
                key, value = f"load/{wid}/{i}", str(random.random())
                try:
                    client.put(key, value)
                    acked[key] = value
                except StoreError as exc:
                    errors.append(exc.message)
                i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    leader = cluster.leader()
    leader.kill()
    time.sleep(3)
    leader.start()
    cluster.wait_ready(leader)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) > 50, f"too little load got through: {len(acked)}, errors {errors[:5]}"
    for member in cluster.members:
        with Client(member.endpoint) as client:
            got = {kv.key.decode(): kv.value.decode() for kv in client.get("load/", prefix=True)}
            missing = [k for k in acked if got.get(k) != acked[k]]
            assert not missing, f"{member.name} lost {len(missing)} acknowledged writes"
