"""A long apply on the leader does not look like a dead leader.

A member applies committed entries on its event loop, and a leader busy applying takes
no Ready meanwhile, so no tick sends its heartbeats. Deleting a large key range is one entry that
takes a while to apply (etcdctl check perf ends with one, ~200k keys). The leader
used to hold the followers' commit notice back (``server.outbox``) until after its
apply, so they heard nothing for longer than their election timeout and elected a new
leader, then another (measured: 400k keys, default timeouts, terms 1 -> 3). Now the
leader sends the notice before such an apply: the followers apply alongside it, and
the leader keeps its term, as etcd's does (its apply runs beside its Raft loop; the
same test runs against it). With watchers on the leader its apply outlasts the
followers' (it also delivers every event), so the leader also sends its heartbeats
from inside that apply. Run with short election timeouts so that a few hundred thousand
keys are enough; the test checks that the delete really took longer than the longest
randomized timeout (twice the configured one). keel-store's unwatched delete became ~6x
faster (watch events built only when watched: 400k keys in 0.41-0.53 s, etcd 3.2-3.6 s),
so without watchers it gets 600k keys and half the timeout (150 ms), with two watchers
400k keys and 150 ms; etcd keeps 150k keys and 300 ms. (keel-store with two watchers at
400k keys and 150 ms elected a new leader in every run until freeing the revision's
built events was paced and sending a large response stopped copying the rest of it for
every frame: 4 of 4 runs failed before, 4 of 4 passed after.)
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from keel_store.pb import rpcgrpc, rpcpb

from .conftest import ETCDCTL, etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

SETUP = {("keel", 0): (600_000, 150), ("keel", 2): (400_000, 150)}
"""Per (server, watchers): keys deleted, election timeout (ms); the heartbeat is a sixth
of it. Others: :data:`DEFAULT`."""
DEFAULT = (150_000, 300)


def _terms(cluster) -> dict[str, tuple[int, int]]:  # type: ignore[no-untyped-def]
    """Member name -> (Raft term, leader ID) as the member reports them."""
    names = {m.endpoint: m.name for m in cluster.members}
    out = {}
    for entry in cluster.status():
        st = entry["Status"]
        out[names[entry["Endpoint"]]] = (int(st["header"]["raft_term"]), int(st.get("leader", 0)))
    assert sorted(out) == sorted(names.values()), out
    return out


def _watch(endpoint: str, out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen(
            [ETCDCTL, f"--endpoints={endpoint}", "watch", "--prefix", "big/"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _deletes_seen(out: Path) -> int:
    return out.read_bytes().count(b"DELETE\n")


def _load(cluster, keys: int) -> int:  # type: ignore[no-untyped-def]
    """Put ``keys`` keys through the leader in txns of 100; returns the leader changes met.

    The load is not what this test checks, and with a 150 ms election timeout a loaded
    machine can stall a member long enough for an election while it runs (once in CI: a
    txn failed with "leader changed"). Such a txn is sent again to the new leader: the
    same puts, so the same keys. What the test checks starts after the load."""
    changes = 0
    leader = cluster.leader()
    channel = grpc.insecure_channel(leader.endpoint)
    try:
        for start in range(0, keys, 100):
            ops = [
                rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"big/%08d" % i, value=b"v"))
                for i in range(start, start + 100)
            ]
            while True:
                try:
                    rpcgrpc.KVStub(channel).Txn(rpcpb.TxnRequest(success=ops), timeout=30)
                    break
                except grpc.RpcError as exc:
                    if exc.code() is not grpc.StatusCode.UNAVAILABLE or changes >= 3:
                        raise
                    changes += 1
                    print(f"load: {exc.details()} at key {start}; sent again to the new leader")
                    channel.close()
                    channel = grpc.insecure_channel(cluster.leader().endpoint)
    finally:
        channel.close()
    return changes


@pytest.mark.parametrize("watchers", [0, 2])
@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_a_leader_applying_a_large_delete_keeps_its_term(  # type: ignore[no-untyped-def]
    make_cluster, tmp_path: Path, binary: str, watchers: int
) -> None:
    """With watchers on the leader its apply lasts longer than the followers' (it also
    delivers every event): the leader then heartbeats from inside the apply."""
    keys, election_ms = SETUP.get((binary, watchers), DEFAULT)
    cluster = make_cluster(
        3,
        binary,
        extra=[f"--heartbeat-interval={election_ms // 6}", f"--election-timeout={election_ms}"],
    )
    changes = _load(cluster, keys)
    leader = cluster.leader()
    outs = [tmp_path / f"watch-{i}.out" for i in range(watchers)]
    procs = [_watch(leader.endpoint, out) for out in outs]
    try:
        time.sleep(1.0)  # the watches are created
        before = _terms(cluster)
        assert len(set(before.values())) == 1, before

        started = time.monotonic()
        deleted = etcdctl(leader.endpoint, "del", "--prefix", "big/", "--command-timeout=60s")
        took = time.monotonic() - started
        assert deleted.stdout.strip() == str(keys)
        assert took > 2 * election_ms / 1000, (
            f"the delete took {took:.2f} s, not longer than the longest election timeout: "
            "this test would not notice a leader that goes quiet while applying"
        )
        time.sleep(2 * election_ms / 1000 + 0.5)  # followers that lost the leader campaign

        after = _terms(cluster)
        print(
            f"{binary}, {watchers} watchers: delete of {keys} keys: {took:.2f} s "
            f"(leader changes during the load: {changes}); "
            f"terms and leaders {before} -> {after}"
        )
        assert after == before, "a member elected a new leader while the leader applied"
        for m in cluster.members:
            r = etcdctl(m.endpoint, "get", "--prefix", "big/", "--limit=1", "-w", "json")
            assert json.loads(r.stdout).get("count", 0) == 0, m.name
        deadline = time.monotonic() + 60
        while any(_deletes_seen(out) < keys for out in outs):
            assert time.monotonic() < deadline, [_deletes_seen(out) for out in outs]
            time.sleep(0.5)
        assert [_deletes_seen(out) for out in outs] == [keys] * watchers
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
