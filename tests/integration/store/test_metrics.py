"""/metrics on --listen-metrics-urls: real values from a 3-member keel-store cluster, and
etcd's names, types, label names and HELP texts checked against Debian's etcd 3.4."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ETCDCTL, Cluster, etcdctl, free_port

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]

PUTS = 20


def scrape(url: str) -> dict[str, Any]:
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(body)}


def value(fams: dict[str, Any], name: str, **labels: str) -> float:
    fam = fams[name]
    samples = [s for s in fam.samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert samples, f"{name}{labels}: no sample"
    return float(sum(s.value for s in samples))


def hist_count(fams: dict[str, Any], name: str) -> float:
    return next(s.value for s in fams[name].samples if s.name == f"{name}_count")


def label_names(fam: Any) -> set[str]:
    return {k for s in fam.samples for k in s.labels}


def workload(endpoint: str) -> None:
    for i in range(PUTS):
        etcdctl(endpoint, "put", f"k{i}", "v")
    etcdctl(endpoint, "get", "k0")
    etcdctl(endpoint, "del", "k1")
    lease = etcdctl(endpoint, "lease", "grant", "60").stdout.split()[1]
    etcdctl(endpoint, "lease", "keep-alive", "--once", lease)


def member_ids(endpoint: str) -> dict[str, str]:
    out = json.loads(etcdctl(endpoint, "member", "list", "-w", "json").stdout)
    return {m["name"]: f"{int(m['ID']):x}" for m in out["members"]}


def test_metrics_from_a_cluster_match_etcd(tmp_path: Path) -> None:
    keel = Cluster(tmp_path, 3, "keel")
    metrics_url = {}
    for m in keel.members:
        metrics_url[m.name] = f"http://127.0.0.1:{free_port()}"
        m.argv.append(f"--listen-metrics-urls={metrics_url[m.name]}")
    etcd = Cluster(tmp_path, 3, "etcd")
    watcher = None
    try:
        keel.start()
        leader = keel.leader()
        before = {n: scrape(u) for n, u in metrics_url.items()}
        workload(leader.endpoint)
        ids = member_ids(leader.endpoint)
        watcher = subprocess.Popen(
            [ETCDCTL, f"--endpoints={leader.endpoint}", "watch", "w"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        health = http.client.HTTPConnection(
            "127.0.0.1", int(metrics_url[leader.name].rsplit(":", 1)[1])
        )
        health.request("GET", "/health")
        assert health.getresponse().status == 200
        health.close()

        # Followers learn the commit index with the next append or heartbeat.
        deadline = time.monotonic() + 10
        while True:
            after = {n: scrape(u) for n, u in metrics_url.items()}
            grown = [
                value(after[n], "etcd_server_proposals_applied_total")
                - value(before[n], "etcd_server_proposals_applied_total")
                for n in after
            ]
            watching = value(after[leader.name], "etcd_debugging_mvcc_watcher_total")
            if (min(grown) >= PUTS + 3 and watching == 1) or time.monotonic() > deadline:
                break
            time.sleep(0.2)

        for name, fams in after.items():
            was = before[name]
            is_leader = name == leader.name
            assert value(fams, "etcd_server_is_leader") == int(is_leader), name
            assert value(fams, "etcd_server_has_leader") == 1, name
            assert value(fams, "etcd_server_leader_changes_seen") >= 1, name
            committed = value(fams, "etcd_server_proposals_committed_total")
            assert committed - value(was, "etcd_server_proposals_committed_total") >= PUTS, name
            assert value(fams, "etcd_server_proposals_applied_total") <= committed
            assert value(fams, "etcd_server_proposals_pending") == 0
            assert hist_count(fams, "etcd_disk_wal_fsync_duration_seconds") > hist_count(
                was, "etcd_disk_wal_fsync_duration_seconds"
            ), name
            # Applied on every member, as etcd counts them.
            assert value(fams, "etcd_mvcc_put") - value(was, "etcd_mvcc_put") == PUTS, name
            assert value(fams, "etcd_mvcc_delete") - value(was, "etcd_mvcc_delete") == 1, name
            assert value(fams, "etcd_debugging_mvcc_keys_total") == PUTS, name
            assert value(fams, "etcd_debugging_lease_granted") == 1, name
            assert value(fams, "etcd_server_id", server_id=ids[name]) == 1
            others = {i for n, i in ids.items() if n != name}
            sent = {s.labels["To"] for s in fams["etcd_network_peer_sent_bytes"].samples}
            got = {s.labels["From"] for s in fams["etcd_network_peer_received_bytes"].samples}
            # Followers talk to the leader; with each other only in an election.
            if is_leader:
                assert (sent, got) == (others, others)
            else:
                assert ids[leader.name] in sent & got, name
            assert value(fams, "etcd_network_peer_sent_bytes") > value(
                was, "etcd_network_peer_sent_bytes"
            )
            assert value(fams, "process_resident_memory_bytes") > 1 << 20
        lead = after[leader.name]
        assert value(lead, "etcd_debugging_lease_renewed") == 1
        assert value(lead, "etcd_network_client_grpc_received_bytes") > value(
            before[leader.name], "etcd_network_client_grpc_received_bytes"
        )
        assert value(lead, "grpc_server_started", grpc_method="Put") == PUTS
        assert value(lead, "grpc_server_handled", grpc_method="Put", grpc_code="OK") == PUTS
        assert value(lead, "etcd_mvcc_range") >= 1
        assert value(lead, "etcd_server_health_success") == 1
        assert value(lead, "etcd_debugging_mvcc_watcher_total") == 1
        assert value(lead, "etcd_debugging_mvcc_watch_stream_total") == 1
        assert value(lead, "grpc_server_started", grpc_method="Watch") == 1
        watcher.kill()
        watcher.wait()

        # The same families from etcd 3.4 (on its client port) after the same workload.
        keel.stop()
        etcd.start()
        workload(etcd.members[0].endpoint)
        theirs: dict[str, Any] = {}
        for m in etcd.members:
            for fam_name, fam in scrape(m.client_url).items():
                theirs.setdefault(fam_name, fam)
        ours = after[leader.name]
        missing = sorted(set(ours) - set(theirs))
        assert not missing, f"keel-store exports families etcd 3.4 does not have: {missing}"
        for fam_name, fam in ours.items():
            other = theirs[fam_name]
            assert fam.type == other.type, fam_name
            assert fam.documentation == other.documentation, fam_name
            if other.samples and fam.samples:
                assert label_names(fam) == label_names(other), fam_name
        for must in (
            "etcd_server_is_leader",
            "etcd_disk_wal_fsync_duration_seconds",
            "etcd_network_peer_sent_bytes",
            "grpc_server_handled",
            "process_cpu_seconds",
        ):
            assert must in ours, must
        buckets = [
            [
                s.labels["le"]
                for s in f["etcd_disk_wal_fsync_duration_seconds"].samples
                if s.name.endswith("_bucket")
            ]
            for f in (ours, theirs)
        ]
        assert buckets[0] == buckets[1]
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
        keel.stop()
        etcd.stop()
