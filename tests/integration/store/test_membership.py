"""etcdctl member add/list/promote/remove against a running keel-store cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest

from keel_store.pb import rpcgrpc, rpcpb

from .conftest import ETCD, Proc, etcdctl, free_port

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]

NOT_IN_SYNC = "etcdserver: can only promote a learner member which is in sync with leader"
UNHEALTHY = "etcdserver: unhealthy cluster"
NOT_ENOUGH_STARTED = "etcdserver: re-configuration failed due to not enough started members"


def member_change(endpoint: str, *args: str) -> str:
    """``etcdctl member ARGS``, retried while the cluster is "unhealthy": with
    --strict-reconfig-check (on by default, as in etcd) a member is added or removed only
    once the member asked has been connected to every voting member for 5 s."""
    deadline = time.monotonic() + 15
    while (r := etcdctl(endpoint, "member", *args, check=False)).returncode != 0:
        assert UNHEALTHY in r.stderr, r.stderr
        assert time.monotonic() < deadline, r.stderr
        time.sleep(0.5)
    return r.stdout


def member_add(endpoint: str, *args: str) -> str:
    return member_change(endpoint, "add", *args)


def join(
    cluster,
    tmp_path,
    name: str,
    *,
    learner: bool = False,
    binary: str = "keel",
    peer: str | None = None,
) -> Proc:
    """``member add`` (asking a running member) then start the new member with the
    environment etcdctl printed; ``peer``: its peer URL (default: a free port)."""
    a = next(m for m in cluster.members if m.alive).endpoint
    peer = peer or f"http://127.0.0.1:{free_port()}"
    client = f"http://127.0.0.1:{free_port()}"
    args = ["member", "add", name, f"--peer-urls={peer}", *(["--learner"] if learner else [])]
    out = member_add(a, *args[2:])
    env = dict(line.split("=", 1) for line in out.splitlines() if line.startswith("ETCD_"))
    env = {k: v.strip('"') for k, v in env.items()}
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    argv = [
        *([sys.executable, "-m", "keel_store.daemon"] if binary == "keel" else [ETCD]),
        f"--data-dir={tmp_path / name}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        "--initial-cluster-token=keel-test",
    ]
    member = Proc(name, argv, client, tmp_path / name, tmp_path / f"{name}.log", env=env)
    member.start()
    cluster.members.append(member)
    return member


def members(endpoint: str) -> dict[str, dict[str, object]]:
    doc = json.loads(etcdctl(endpoint, "member", "list", "-w", "json").stdout)
    return {format(m["ID"], "x"): m for m in doc["members"]}


def flag(member: Proc, name: str) -> str:
    """The value of ``--name=value`` in the member's command line."""
    return next(a.split("=", 1)[1] for a in member.argv if a.startswith(f"{name}="))


def test_add_start_remove_member(make_cluster, tmp_path) -> None:
    cluster = make_cluster(3)
    a = cluster.members[0].endpoint
    for i in range(10):
        etcdctl(a, "put", f"k{i}", str(i))
    new = join(cluster, tmp_path, "m3")
    cluster.wait_ready(new)
    assert etcdctl(new.endpoint, "get", "k9", "--print-value-only").stdout.strip() == "9"
    listed = members(a)
    assert len(listed) == 4
    (new_id,) = [mid for mid, m in listed.items() if m.get("name") == "m3"]
    status = json.loads(etcdctl(new.endpoint, "endpoint", "status", "-w", "json").stdout)
    assert format(status[0]["Status"]["header"]["member_id"], "x") == new_id
    etcdctl(new.endpoint, "put", "from-new", "yes")
    assert etcdctl(a, "get", "from-new", "--print-value-only").stdout.strip() == "yes"
    assert "removed" in etcdctl(a, "member", "remove", new_id).stdout
    assert len(members(a)) == 3
    etcdctl(a, "put", "after", "remove")
    r = etcdctl(a, "member", "remove", new_id, check=False)
    assert "etcdserver: member not found" in r.stderr


def test_learner_then_promote(make_cluster, tmp_path) -> None:
    cluster = make_cluster(1)
    a = cluster.members[0].endpoint
    etcdctl(a, "put", "x", "1")
    learner = join(cluster, tmp_path, "l1", learner=True)
    (lid,) = [mid for mid, m in members(a).items() if m.get("isLearner")]
    deadline = time.monotonic() + 30
    while (r := etcdctl(a, "member", "promote", lid, check=False)).returncode != 0:
        assert NOT_IN_SYNC in r.stderr, r.stderr  # only "not caught up yet" may be retried
        assert time.monotonic() < deadline, "the learner never caught up"
        time.sleep(0.3)
    assert not any(m.get("isLearner") for m in members(a).values())
    cluster.wait_ready(learner)
    assert etcdctl(learner.endpoint, "get", "x", "--print-value-only").stdout.strip() == "1"
    r = etcdctl(a, "member", "promote", lid, check=False)
    assert "can only promote a learner member" in r.stderr


def promote_unstarted_learner(endpoint: str) -> list[str]:
    """Add a learner that never starts, then try to promote it (and a made-up member)."""
    for i in range(20):
        etcdctl(endpoint, "put", f"k{i}", "v")
    peer = f"http://127.0.0.1:{free_port()}"
    member_add(endpoint, "ghost", f"--peer-urls={peer}", "--learner")
    (lid,) = [mid for mid, m in members(endpoint).items() if m.get("isLearner")]
    time.sleep(1.0)  # the leader has the learner in its Raft configuration by now
    out = []
    for target in (lid, "1234abcd"):
        r = etcdctl(endpoint, "member", "promote", target, check=False)
        out.append(r.stderr.strip().splitlines()[-1] if r.returncode else "promoted")
    return out


def test_promote_refuses_a_learner_behind_the_leader_as_etcd(make_cluster) -> None:
    keel = make_cluster(1)
    etcd = make_cluster(1, binary="etcd")
    ours = promote_unstarted_learner(keel.members[0].endpoint)
    theirs = promote_unstarted_learner(etcd.members[0].endpoint)
    assert NOT_IN_SYNC in theirs[0]
    assert ours == theirs


def test_promote_through_a_follower_asks_the_leader(make_cluster) -> None:
    """Only the leader knows how far the learner's log is; a follower must ask it."""
    cluster = make_cluster(3)
    leader = cluster.leader()
    follower = next(m for m in cluster.members if m is not leader).endpoint
    out = promote_unstarted_learner(follower)
    assert out == [f"Error: {NOT_IN_SYNC}", "Error: etcdserver: member not found"]


def outcome(r) -> str:  # type: ignore[no-untyped-def]
    return "ok" if r.returncode == 0 else r.stderr.strip().splitlines()[-1]


def member_ids(endpoint: str) -> dict[str, str]:
    """Name -> hex ID (members that never started have no name: left out)."""
    return {str(m["name"]): mid for mid, m in members(endpoint).items() if m.get("name")}


def reconfig_with_a_member_down(cluster) -> list[str]:  # type: ignore[no-untyped-def]
    """etcd's mayAddMember / mayRemoveMember: the same requests, what each one answers."""
    a = cluster.members[0].endpoint
    ids = member_ids(a)
    time.sleep(6)  # connected to every peer for etcd's HealthInterval (5 s)
    cluster.members[2].kill()
    cluster.leader()  # (m2 may have been the leader)
    time.sleep(1)

    def ctl(*args: str) -> str:
        return outcome(etcdctl(a, *args, check=False))

    def url() -> str:
        return f"--peer-urls=http://127.0.0.1:{free_port()}"

    out = [ctl("member", "add", "v1", url())]  # m2 is down: not fully connected
    if out != ["ok"]:  # (with the check off, v1 is in: 2 of 4 voters up, no quorum)
        out += [
            ctl("member", "add", "l1", url(), "--learner"),  # learners too
            ctl("member", "remove", ids["m1"]),  # a live voter: m0 + m1 are all that is left
            ctl("member", "remove", ids["m2"]),  # a member that is down may go
            ctl("member", "add", "l1", url(), "--learner"),
            ctl("member", "add", "v2", url()),  # 2 started of 3: a quorum
            ctl("member", "add", "v3", url()),  # 2 started of 4 (v2 never started): refused
            ctl("member", "remove", ids["m0"]),  # 1 started left of 2 (v2): refused
        ]
    return out


def test_strict_reconfig_check_answers_as_etcd(make_cluster) -> None:
    ours = reconfig_with_a_member_down(make_cluster(3))
    theirs = reconfig_with_a_member_down(make_cluster(3, binary="etcd"))
    unhealthy, not_started = f"Error: {UNHEALTHY}", f"Error: {NOT_ENOUGH_STARTED}"
    expected = [unhealthy, unhealthy, unhealthy, "ok", "ok", "ok", not_started, not_started]
    assert theirs == expected
    assert ours == theirs


def test_reconfig_refusal_codes_as_etcd(make_cluster) -> None:
    """The gRPC status codes (etcdctl shows only the message)."""

    def codes(endpoint: str) -> list[str]:
        stub = rpcgrpc.ClusterStub(grpc.insecure_channel(endpoint))
        out = []
        for _ in range(2):  # the 2nd: 1 started member of 3
            req = rpcpb.MemberAddRequest(peerURLs=[f"http://127.0.0.1:{free_port()}"])
            try:
                stub.MemberAdd(req, timeout=10)
                out.append("ok")
            except grpc.RpcError as exc:
                out.append(f"{exc.code().name}: {exc.details()}")
        return out

    ours = codes(make_cluster(1).members[0].endpoint)
    theirs = codes(make_cluster(1, binary="etcd").members[0].endpoint)
    assert theirs == ["ok", f"UNKNOWN: {NOT_ENOUGH_STARTED}"]
    assert ours == theirs


def test_no_strict_reconfig_check_allows_all(make_cluster) -> None:
    off = ["--strict-reconfig-check=false"]
    ours = reconfig_with_a_member_down(make_cluster(3, extra=off))
    theirs = reconfig_with_a_member_down(make_cluster(3, binary="etcd", extra=off))
    assert ours == theirs == ["ok"]


def lone_leader(member: Proc) -> bool:
    st = json.loads(etcdctl(member.endpoint, "endpoint", "status", "-w", "json").stdout)[0]
    return bool(st["Status"].get("leader") == st["Status"]["header"]["member_id"])


def force_new_cluster(cluster, tmp_path, binary: str, keys: int = 40) -> list[object]:  # type: ignore[no-untyped-def]
    """Three members, every one killed; the leader comes back with --force-new-cluster.
    What it looks like then, after a restart without the flag, and after a member joins."""
    for i in range(keys):
        etcdctl(cluster.members[i % 3].endpoint, "put", f"k{i}", str(i))
    survivor = cluster.leader()  # it has every acknowledged entry in its log
    for m in cluster.members:
        m.kill()
    survivor.argv.append("--force-new-cluster")
    survivor.start()
    cluster.wait_ready(survivor)
    e = survivor.endpoint
    out: list[object] = [len(members(e)), lone_leader(survivor)]
    got = etcdctl(e, "get", "k", "--prefix", "--print-value-only").stdout.split()
    out.append(keys - len(got))  # acknowledged keys lost
    etcdctl(e, "put", "after", "force")
    survivor.kill()
    survivor.argv.remove("--force-new-cluster")
    survivor.start()
    cluster.wait_ready(survivor)
    out += [len(members(e)), lone_leader(survivor)]
    out.append(etcdctl(e, "get", "after", "--print-value-only").stdout.strip())
    cluster.members[:] = [survivor]
    new = join(cluster, tmp_path, "m9", binary=binary)
    cluster.wait_ready(new)
    out.append(etcdctl(new.endpoint, "get", "after", "--print-value-only").stdout.strip())
    out.append(len(members(e)))
    return out


def test_force_new_cluster_as_etcd(make_cluster, tmp_path) -> None:
    """etcd keeps only what its WAL's commit index covers: a commit index moved without
    an fsync stays in its write buffer, so SIGKILL loses it and the last acknowledged
    writes with it (one key in every run here). keel-store commits the whole local log."""
    ours = force_new_cluster(make_cluster(3), tmp_path / "keel", "keel")
    theirs = force_new_cluster(make_cluster(3, binary="etcd"), tmp_path / "etcd", "etcd")
    assert ours == [1, True, 0, 1, True, "force", "force", 2]
    assert theirs[:2] + theirs[3:] == [1, True, 1, True, "force", "force", 2]


def test_force_new_cluster_is_ignored_by_a_new_member(make_cluster) -> None:
    """etcd ignores it without a WAL: the members bootstrap from --initial-cluster."""
    for binary in ("keel", "etcd"):
        cluster = make_cluster(3, binary=binary, extra=["--force-new-cluster"])
        assert len(members(cluster.members[0].endpoint)) == 3


REMOVED = "the member has been permanently removed from the cluster"


def member_remove(endpoint: str, member_id: str) -> None:
    assert "removed from cluster" in member_change(endpoint, "remove", member_id)


def exits(member: Proc, timeout: float) -> int:
    """The member's exit status, once it has stopped on its own."""
    assert member.proc is not None
    try:
        return member.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{member.name} still runs after {timeout} s:\n" + member.log_path.read_text()[-3000:]
        ) from None


@pytest.mark.parametrize("role", ["follower", "leader"])
@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_a_removed_member_stops_as_etcd_does(make_cluster, binary: str, role: str) -> None:
    """A member removed from the cluster stops, with exit status 0 and etcd's words in
    its log, whether it hears of its removal from the log (it applies it) or from the
    peers that refuse it. Started again on its data directory, it stops again. The
    other two serve on."""
    cluster = make_cluster(3, binary=binary)
    leader = cluster.leader()
    gone = leader if role == "leader" else next(m for m in cluster.members if m is not leader)
    rest = next(m for m in cluster.members if m is not gone)
    (gone_id,) = [i for i, m in members(rest.endpoint).items() if m.get("name") == gone.name]
    member_remove(rest.endpoint, gone_id)
    assert exits(gone, 20) == 0
    assert REMOVED in gone.log_path.read_text()
    assert gone_id not in members(rest.endpoint)
    rest = cluster.leader()  # the removed leader's followers elect one
    etcdctl(rest.endpoint, "put", "after", "removal")
    gone.start()  # on its data directory: the peers refuse it
    assert exits(gone, 20) == 0
    live = [m for m in cluster.members if m is not gone]
    for m in live:
        assert etcdctl(m.endpoint, "get", "after", "--print-value-only").stdout.strip() == (
            "removal"
        )


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_a_member_removed_then_added_again_with_its_urls_serves(
    make_cluster, tmp_path, binary: str
) -> None:
    """The usual replacement of a failed machine: remove the member, add one with the
    same peer URL and a new data directory. It gets a new ID (etcd hashes the time of
    ``member add`` into it), learns it from its peers, and keeps it across a restart."""
    cluster = make_cluster(3, binary=binary)
    leader = cluster.leader()
    gone = next(m for m in cluster.members if m is not leader)
    (gone_id,) = [i for i, m in members(leader.endpoint).items() if m.get("name") == gone.name]
    peer_url = flag(gone, "--initial-advertise-peer-urls")
    member_remove(leader.endpoint, gone_id)
    exits(gone, 20)
    for i in range(20):
        etcdctl(leader.endpoint, "put", f"k{i}", str(i))
    again = join(cluster, tmp_path, "again", binary=binary, peer=peer_url)
    cluster.wait_ready(again)
    assert etcdctl(again.endpoint, "get", "k19", "--print-value-only").stdout.strip() == "19"
    listed = members(leader.endpoint)
    assert len(listed) == 3
    (new_id,) = [i for i, m in listed.items() if m.get("name") == "again"]
    assert new_id != gone_id
    again.kill()
    again.start()
    cluster.wait_ready(again)
    status = json.loads(etcdctl(again.endpoint, "endpoint", "status", "-w", "json").stdout)
    assert format(status[0]["Status"]["header"]["member_id"], "x") == new_id
    assert (
        status[0]["Status"]["header"]["cluster_id"]
        == json.loads(etcdctl(leader.endpoint, "endpoint", "status", "-w", "json").stdout)[0][
            "Status"
        ]["header"]["cluster_id"]
    )


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_a_member_that_was_not_added_cannot_join(make_cluster, tmp_path, binary: str) -> None:
    """``--initial-cluster-state=existing`` without ``member add`` first: the running
    cluster lists one member less than the flags, and the new member stops with etcd's
    message (exit status 1) before it writes anything."""
    cluster = make_cluster(1, binary=binary)
    (first,) = cluster.members
    initial = f"--initial-cluster={flag(first, '--initial-cluster')}"
    peer = f"http://127.0.0.1:{free_port()}"
    client = f"http://127.0.0.1:{free_port()}"
    argv = [
        *([sys.executable, "-m", "keel_store.daemon"] if binary == "keel" else [ETCD]),
        "--name=stray",
        f"--data-dir={tmp_path / 'stray'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"{initial},stray={peer}",
        "--initial-cluster-state=existing",
        "--initial-cluster-token=keel-test",
    ]
    stray = Proc("stray", argv, client, tmp_path / "stray", tmp_path / "stray.log")
    stray.start()
    assert exits(stray, 20) == 1
    assert "member count is unequal" in stray.log_path.read_text()
    assert len(members(first.endpoint)) == 1


MISMATCH_HERE = "request cluster ID mismatch"
MISMATCH_THERE = "request sent was ignored by remote peer due to cluster ID mismatch"


def raft_terms(endpoints: str) -> set[int]:
    out = etcdctl(endpoints, "endpoint", "status", "-w", "json").stdout
    return {int(s["Status"]["raftTerm"]) for s in json.loads(out)}


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_a_member_of_another_cluster_is_refused(make_cluster, tmp_path, binary: str) -> None:
    """Peer traffic carries the cluster ID, as etcd's carries ``X-Etcd-Cluster-ID``. Two
    members of a 3-member cluster are wiped and start a 2-member cluster on the same peer
    URLs with the same token; the third, started again on its old data directory, still
    dials them. They refuse it ("request cluster ID mismatch"), it logs that it was
    ignored and keeps running without a leader, and its elections never reach the new
    cluster: no new term there, its data and member list untouched."""
    old = make_cluster(3, binary=binary)
    for m in old.members:
        m.kill()
    stale, *pair = old.members
    initial = ",".join(f"{m.name}={flag(m, '--initial-advertise-peer-urls')}" for m in pair)
    fresh = []
    for m in pair:
        argv = [
            f"--data-dir={tmp_path / 'new' / m.name}"
            if a.startswith("--data-dir=")
            else f"--initial-cluster={initial}"
            if a.startswith("--initial-cluster=")
            else a
            for a in m.argv
        ]
        proc = Proc(
            m.name, argv, m.client_url, tmp_path / "new" / m.name, tmp_path / f"new-{m.name}.log"
        )
        fresh.append(proc)
        old.members.append(proc)  # killed at teardown, logs printed on failure
    for proc in fresh:
        proc.start()
    for proc in fresh:
        old.wait_ready(proc)
    endpoints = ",".join(p.endpoint for p in fresh)
    etcdctl(endpoints, "put", "k", "new cluster")
    before = raft_terms(endpoints)
    stale.start()
    deadline = time.monotonic() + 20
    while MISMATCH_THERE not in stale.log_path.read_text():
        assert stale.alive, stale.log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, stale.log_path.read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(4)  # a few of the stale member's election timeouts
    assert stale.alive
    assert any(MISMATCH_HERE in p.log_path.read_text() for p in fresh)
    assert raft_terms(endpoints) == before
    assert etcdctl(endpoints, "get", "k", "--print-value-only").stdout.strip() == "new cluster"
    assert len(members(fresh[0].endpoint)) == 2
    r = etcdctl(stale.endpoint, "put", "k", "stale", check=False)
    assert r.returncode != 0


def listing(endpoint: str) -> dict[str, tuple[object, ...]]:
    """name -> (peer URLs, client URLs), as ``member list`` gives them."""
    return {
        str(m.get("name", "")): (tuple(m["peerURLs"]), tuple(m.get("clientURLs", ())))
        for m in members(endpoint).values()
    }


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_a_member_that_is_down_is_listed_with_its_client_urls(make_cluster, binary: str) -> None:
    """Every member publishes its name and client URLs through the log when it starts
    (etcd's ``publish``): a member restarted while another is down still lists that
    one's client URLs, so ``etcdctl member list`` (and a client's endpoint sync) finds
    every member's client URLs on any member."""
    cluster = make_cluster(3, binary=binary)
    first, second, down = cluster.members
    expected = listing(first.endpoint)
    assert all(urls for _, urls in expected.values()), expected
    assert expected[down.name][1] == (down.client_url,)
    down.kill()
    first.kill()
    first.start()
    cluster.wait_ready(first)
    assert listing(first.endpoint) == expected
    assert listing(second.endpoint) == expected
