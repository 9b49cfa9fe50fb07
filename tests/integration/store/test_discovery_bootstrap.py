"""--discovery: members bootstrap from a discovery service, as etcd's do.

The discovery service is Debian's etcd with its v2 API on (what discovery.etcd.io
runs), on loopback; the members are keel-store, and for comparison etcd itself.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel_core.testing import free_port

from .conftest import ETCD, Cluster, Proc, etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    """A discovery service: etcd with the v2 API; yields its client URL."""
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    proc = Proc(
        "disc",
        [ETCD, "--name=disc", f"--data-dir={tmp_path / 'disc'}", "--enable-v2=true",
         f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
         f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
         f"--initial-cluster=disc={peer}"],
        client, tmp_path / "disc", tmp_path / "disc.log",
    )  # fmt: skip
    proc.start()
    try:
        _cluster([proc]).wait_ready(proc)
        yield client
    finally:
        proc.kill()


def _cluster(members: list[Proc]) -> Cluster:
    cluster = Cluster.__new__(Cluster)
    cluster.members, cluster.ctl, cluster.proxies = members, [], []
    return cluster


def _new_token(service: str, name: str, size: int | None) -> str:
    url = f"{service}/v2/keys/discovery/{name}"
    if size is not None:
        body = urllib.parse.urlencode({"value": str(size)}).encode()
        request = urllib.request.Request(f"{url}/_config/size", data=body, method="PUT")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status in (200, 201)
    return url


def _member(tmp_path: Path, binary: str, name: str, discovery: str, *extra: str) -> Proc:
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    flags = [
        f"--name={name}", f"--data-dir={tmp_path / binary / name}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--discovery={discovery}", *extra,
    ]  # fmt: skip
    argv = (
        [sys.executable, "-m", "keel_store.daemon", *flags] if binary == "keel" else [ETCD, *flags]
    )
    return Proc(name, argv, client, tmp_path / binary / name, tmp_path / f"{binary}-{name}.log")


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_three_members_bootstrap_from_the_service(
    tmp_path: Path, service: str, binary: str
) -> None:
    url = _new_token(service, f"three-{binary}", 3)
    members = [_member(tmp_path, binary, f"d{i}", url) for i in range(3)]
    for m in members:
        m.start()
        time.sleep(0.3)  # registered in this order
    cluster = _cluster(members)
    try:
        for m in members:
            cluster.wait_ready(m, timeout=60)
        listed = json.loads(etcdctl(members[0].endpoint, "member", "list", "-w", "json").stdout)
        assert sorted(m["name"] for m in listed["members"]) == ["d0", "d1", "d2"]
        etcdctl(members[0].endpoint, "put", "via", "discovery")
        got = etcdctl(members[2].endpoint, "get", "via", "--print-value-only").stdout
        assert got.strip() == "discovery"
        # A fourth member finds the cluster full and exits.
        extra = _member(tmp_path, binary, "d3", url, "--discovery-fallback=exit")
        extra.start()
        assert extra.proc is not None
        assert extra.proc.wait(60) != 0
        assert "discovery: cluster is full" in extra.log_path.read_text()
        # The registrations are etcd's: one key per member ID, "name=peer-url".
        with urllib.request.urlopen(url, timeout=5) as response:
            nodes = json.loads(response.read())["node"]["nodes"]
        values = sorted(n["value"] for n in nodes if not n["key"].endswith("_config"))
        assert [v.split("=", 1)[0] for v in values] == ["d0", "d1", "d2"]
    finally:
        cluster.stop()


def test_a_restarted_member_does_not_ask_the_service_again(tmp_path: Path, service: str) -> None:
    url = _new_token(service, "restart", 1)
    member = _member(tmp_path, "keel", "solo", url)
    member.start()
    cluster = _cluster([member])
    try:
        cluster.wait_ready(member)
        etcdctl(member.endpoint, "put", "k", "v")
        member.kill()
        # The service no longer knows the token: a new member would fail.
        request = urllib.request.Request(url + "?recursive=true&dir=true", method="DELETE")
        with urllib.request.urlopen(request, timeout=5):
            pass
        member.start()
        cluster.wait_ready(member)
        assert etcdctl(member.endpoint, "get", "k", "--print-value-only").stdout.strip() == "v"
    finally:
        cluster.stop()


def test_discovery_errors_are_etcds(tmp_path: Path, service: str) -> None:
    no_size = _new_token(service, "nosize", None)
    member = _member(tmp_path, "keel", "lost", no_size)
    member.start()
    assert member.proc is not None
    assert member.proc.wait(30) == 1
    assert "discovery: size key not found" in member.log_path.read_text()
    both = _member(tmp_path, "keel", "both", no_size, "--initial-cluster=both=http://h:1")
    both.start()
    assert both.proc is not None
    assert both.proc.wait(30) == 2
    assert "multiple discovery or bootstrap flags are set" in both.log_path.read_text()
