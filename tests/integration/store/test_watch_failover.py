"""A watch that outlives its member: Debian's etcdctl (clientv3) watches a prefix over
all three endpoints while each member in turn is killed -9 and restarted under writes.
The client reconnects elsewhere and resumes from its last revision; what it printed
must be every event of the prefix exactly once, in revision order: the same list a
fresh watch from the first revision replays. Against keel-store and etcd alike."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from keel_store.client import Client, StoreError

from .conftest import ETCDCTL, etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]


def events(lines: list[str]) -> list[tuple[int, str, str]]:
    """(mod revision, key, value) of each event in ``etcdctl watch -w json`` output."""
    out = []
    for line in lines:
        doc = json.loads(line)
        for event in doc.get("Events") or []:
            kv = event["kv"]
            out.append(
                (
                    int(kv["mod_revision"]),
                    base64.b64decode(kv["key"]).decode(),
                    base64.b64decode(kv.get("value", "")).decode(),
                )
            )
    return out


def watch_argv(endpoints: str, first: int) -> list[str]:
    return [
        ETCDCTL,
        f"--endpoints={endpoints}",
        "watch",
        "--prefix",
        "f/",
        f"--rev={first}",
        "-w",
        "json",
    ]


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_etcdctl_watch_resumes_on_another_member_without_loss(make_cluster, binary) -> None:
    cluster = make_cluster(3, binary=binary)
    endpoints = ",".join(m.endpoint for m in cluster.members)
    with Client([m.endpoint for m in cluster.members], timeout=3) as client:
        first = client.put("f/start", "0")
    watch = subprocess.Popen(
        watch_argv(endpoints, first),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout or []))
    reader.start()
    stop = threading.Event()
    acked: list[str] = []

    def write() -> None:
        with Client([m.endpoint for m in cluster.members], timeout=3) as client:
            i = 0
            while not stop.is_set():
                try:
                    client.put(f"f/{i % 20}", str(i))
                    acked.append(str(i))
                except StoreError:
                    time.sleep(0.05)
                i += 1

    writer = threading.Thread(target=write)
    writer.start()
    ids = {st["Endpoint"]: st["Status"]["header"]["member_id"] for st in cluster.status()}
    try:
        for member in cluster.members:  # the watch's member is among them
            time.sleep(1.0)
            watched = json.loads(lines[-1])["Header"]["member_id"] if lines else None
            member.kill(signal.SIGKILL)
            time.sleep(1.0)
            # The watch's own member stays down until the watch goes on elsewhere: back
            # after a second, it was sometimes where etcdctl reconnected (seen with etcd).
            deadline = time.monotonic() + 20
            while watched == ids[member.endpoint] and time.monotonic() < deadline:
                if json.loads(lines[-1])["Header"]["member_id"] != watched:
                    break
                time.sleep(0.1)
            member.start()
            cluster.wait_ready(member)
        time.sleep(1.0)
    finally:
        stop.set()
        writer.join(30)
    with Client([m.endpoint for m in cluster.members], timeout=3) as client:
        last = client.put("f/end", "0")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(r == last for r, _, _ in events(lines)):
        time.sleep(0.2)
    watch.send_signal(signal.SIGINT)
    watch.wait(10)
    reader.join(10)
    seen = events(lines)
    # A fresh watch from the first revision, cut at the last one: the reference list.
    fresh = subprocess.Popen(
        watch_argv(endpoints, first),
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    reference: list[str] = []
    for line in fresh.stdout or []:
        reference.append(line)
        if any(r == last for r, _, _ in events([line])):
            break
    fresh.kill()
    fresh.wait(10)
    expected = events(reference)
    assert len(acked) > 50, f"too little load got through: {len(acked)}"
    assert [r for r, _, _ in seen] == sorted({r for r, _, _ in seen}), "out of order or twice"
    assert seen == expected, (
        f"{len(seen)} events seen, {len(expected)} in history; "
        f"missing {sorted(set(expected) - set(seen))[:5]}"
    )
    members = {json.loads(line)["Header"]["member_id"] for line in lines}
    assert len(members) >= 2, "the watch never moved to another member"
    values = {v for _, k, v in seen if k not in {"f/start", "f/end"}}
    assert set(acked) <= values, "an acknowledged put was never seen by the watch"


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_etcdctl_watch_on_a_member_left_without_leader_is_cancelled(make_cluster, binary) -> None:
    """etcd's monitorLeader: the watch (etcdctl asks for a leader) of a member that has
    been without a leader for three election timeouts is cancelled, so the client
    learns it (keel-store kept it open, silent, forever)."""
    cluster = make_cluster(3, binary=binary, extra=["--election-timeout=500"])
    survivor, *others = cluster.members
    put = json.loads(etcdctl(survivor.endpoint, "put", "k", "1", "-w", "json").stdout)
    revision = put["header"]["revision"]
    watch = subprocess.Popen(
        [ETCDCTL, f"--endpoints={survivor.endpoint}", "watch", "k", f"--rev={revision}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    try:
        assert (watch.stdout.readline() if watch.stdout else "") == "PUT\n"
        for member in others:
            member.kill(signal.SIGKILL)
        _, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
        watch.wait(10)
    assert "watch was canceled (etcdserver: no leader)" in err


KEEP_ALIVE_TTL = {"keel": 3, "etcd": 8}
"""The lease of the keep-alive test, per server. etcd's clientv3 ends a keep-alive that
had no answer for a TTL (its ``deadlineLoop``), and asks again a third of a TTL after the
last answer, 0.5 s after a failed stream: the lease must outlast a third of the TTL,
the failover and that 0.5 s. keel-store fails over in 0.05-0.25 s; etcd's election
here takes 1-2 s (2 s measured by the failover bench), which leaves 3 s at most 0.5 s
to spare for etcd itself: its run failed once in CI (2026-12-07), and once more in 36
runs here under load (which of the two servers, not recorded; the other 35 passed).
8 s holds 2.7 s + 2 s + 0.5 s with 2.8 s to spare; keel-store keeps 3 s."""


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_etcdctl_lease_keep_alive_outlives_each_member(make_cluster, binary) -> None:
    """`etcdctl lease keep-alive` over three endpoints keeps a short lease (and its
    key) alive while each member in turn is killed -9 and restarted."""
    ttl = KEEP_ALIVE_TTL[binary]
    cluster = make_cluster(3, binary=binary)
    endpoints = ",".join(m.endpoint for m in cluster.members)
    lease = etcdctl(endpoints, "lease", "grant", str(ttl)).stdout.split()[1]
    etcdctl(endpoints, "put", "held", "1", f"--lease={lease}")
    keeper = subprocess.Popen(
        [ETCDCTL, f"--endpoints={endpoints}", "lease", "keep-alive", lease],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    try:
        for member in cluster.members:
            time.sleep(1.0)
            member.kill(signal.SIGKILL)
            time.sleep(1.0)
            member.start()
            cluster.wait_ready(member)
        time.sleep(ttl + 1.0)  # longer than the TTL: only the keep-alives hold it
        alive = keeper.poll() is None
    finally:
        keeper.kill()
        _, err = keeper.communicate(timeout=10)
    assert alive, f"etcdctl lease keep-alive ended: {err}"
    got = etcdctl(endpoints, "get", "held", "--print-value-only").stdout
    assert got == "1\n", "the lease expired: its key is gone"
