"""--quota-backend-bytes: the NOSPACE alarm blocks writes until compaction and disarm."""

from __future__ import annotations

import json

import pytest

from .conftest import etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]


def test_nospace_alarm_cycle(make_cluster) -> None:
    cluster = make_cluster(1, extra=["--quota-backend-bytes=20000"])
    ep = cluster.members[0].endpoint
    failed = None
    for i in range(100):
        r = etcdctl(ep, "put", f"k{i:03d}", "x" * 300, check=False)
        if r.returncode != 0:
            failed = r.stderr
            break
    assert failed is not None, "the quota never triggered"
    assert "etcdserver: mvcc: database space exceeded" in failed
    assert "alarm:NOSPACE" in etcdctl(ep, "alarm", "list").stdout
    status = json.loads(etcdctl(ep, "endpoint", "status", "-w", "json").stdout)[0]["Status"]
    assert any("alarm:NOSPACE" in e for e in status["errors"])
    assert etcdctl(ep, "get", "k000", "--print-value-only").stdout.startswith("xxx")
    r = etcdctl(ep, "put", "small", "x", check=False)
    assert "database space exceeded" in r.stderr, "writes stay blocked while the alarm is up"
    etcdctl(ep, "del", "--prefix", "k")
    rev = json.loads(etcdctl(ep, "endpoint", "status", "-w", "json").stdout)[0]["Status"]["header"][
        "revision"
    ]
    etcdctl(ep, "compaction", str(rev))
    etcdctl(ep, "defrag")
    etcdctl(ep, "alarm", "disarm")
    assert etcdctl(ep, "alarm", "list").stdout.strip() == ""
    assert etcdctl(ep, "put", "small", "x").stdout.strip() == "OK"
