"""--discovery-srv: SRV records -> the initial cluster, with etcd 3.4's names and errors.

The resolver is a fake holding records and addresses (the real DNS path runs in
``tests/integration/store/test_srv_discovery.py``, with a DNS server in a network
namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

import pytest

from keel_store import daemon, srv_discovery
from keel_store.srv_discovery import DnsLookupError, SrvDiscoveryError, initial_cluster


class FakeResolver:
    """SRV records by name, addresses by host (a target keeps its trailing dot)."""

    def __init__(self, srv: dict[str, list[tuple[str, int]]], hosts: dict[str, str]) -> None:
        self.srv, self.hosts, self.asked = srv, hosts, []  # type: ignore[var-annotated]

    def lookup_srv(self, name: str) -> list[tuple[str, int]]:
        self.asked.append(name)
        if name not in self.srv:
            raise DnsLookupError(f"lookup {name} on 127.0.0.1:53: no such host")
        return self.srv[name]

    def resolve_tcp_addr(self, host: str, port: int) -> str:
        if host[:1].isdigit():  # an address is itself
            return f"{host}:{port}"
        if host.rstrip(".") not in self.hosts:
            raise DnsLookupError(f"lookup {host} on 127.0.0.1:53: no such host")
        return f"{self.hosts[host.rstrip('.')]}:{port}"


HOSTS = {"m0.keel.test": "10.0.0.1", "m1.keel.test": "10.0.0.2", "m2.keel.test": "10.0.0.3"}
HOSTS |= {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1"}
SSL = [("m0.keel.test.", 2380), ("m1.keel.test.", 2380), ("m2.keel.test.", 2380)]


def test_the_member_is_named_and_the_others_numbered() -> None:
    resolver = FakeResolver({"_etcd-server-ssl._tcp.keel.test": SSL}, HOSTS)
    got = initial_cluster("keel.test", "", "b", ["https://10.0.0.2:2380"], resolver)
    assert got == (
        "0=https://m0.keel.test:2380,b=https://m1.keel.test:2380,1=https://m2.keel.test:2380"
    )
    assert resolver.asked == ["_etcd-server-ssl._tcp.keel.test", "_etcd-server._tcp.keel.test"]


def test_the_member_is_matched_by_address_and_port() -> None:
    """Three members on one address: only the port tells them apart (as etcd matches)."""
    records = [("m0.keel.test.", 2380), ("m0.keel.test.", 2480), ("m0.keel.test.", 2580)]
    hosts = {"m0.keel.test": "127.0.0.1", "localhost": "127.0.0.1"}
    resolver = FakeResolver({"_etcd-server._tcp.keel.test": records}, hosts)
    got = initial_cluster("keel.test", "", "me", ["http://localhost:2480"], resolver)
    assert got == (
        "0=http://m0.keel.test:2380,me=http://m0.keel.test:2480,1=http://m0.keel.test:2580"
    )


def test_the_service_name_suffix() -> None:
    resolver = FakeResolver(
        {"_etcd-server-ssl._tcp.keel.test": SSL[:1], "_etcd-server-ssl-east._tcp.keel.test": SSL},
        HOSTS,
    )
    got = initial_cluster("keel.test", "east", "c", ["https://m2.keel.test:2380"], resolver)
    assert got.endswith(",c=https://m2.keel.test:2380")
    assert resolver.asked == [
        "_etcd-server-ssl-east._tcp.keel.test",
        "_etcd-server-east._tcp.keel.test",
    ]


def test_ssl_and_plain_records_are_combined_without_reusing_a_name() -> None:
    resolver = FakeResolver(
        {
            "_etcd-server-ssl._tcp.keel.test": SSL[:2],
            "_etcd-server._tcp.keel.test": [("m2.keel.test.", 2380)],
        },
        HOSTS,
    )
    got = initial_cluster("keel.test", "", "a", ["https://10.0.0.1:2380"], resolver)
    assert (
        got == "a=https://m0.keel.test:2380,0=https://m1.keel.test:2380,1=http://m2.keel.test:2380"
    )


def test_no_records_is_etcds_error() -> None:
    with pytest.raises(SrvDiscoveryError) as info:
        initial_cluster("keel.test", "", "a", ["https://10.0.0.1:2380"], FakeResolver({}, HOSTS))
    assert str(info.value) == (
        "error querying DNS SRV records for _etcd-server-ssl lookup"
        " _etcd-server-ssl._tcp.keel.test on 127.0.0.1:53: no such host"
    )


def test_a_member_not_among_the_records_is_refused() -> None:
    resolver = FakeResolver({"_etcd-server-ssl._tcp.keel.test": SSL}, HOSTS)
    with pytest.raises(SrvDiscoveryError) as info:
        initial_cluster("keel.test", "", "d", ["https://10.0.0.9:2380"], resolver)
    assert str(info.value) == 'cannot find local etcd member "d" in SRV records'


def test_a_scheme_mismatch_with_the_own_url() -> None:
    resolver = FakeResolver({"_etcd-server-ssl._tcp.keel.test": SSL[:1]}, HOSTS)
    with pytest.raises(SrvDiscoveryError) as info:
        initial_cluster("keel.test", "", "a", ["http://10.0.0.1:2380"], resolver)
    assert str(info.value) == (
        "error querying DNS SRV records for _etcd-server-ssl bootstrap at"
        " https://m0.keel.test:2380 from DNS for etcd-server-ssl has scheme mismatch with"
        " expected peer http://10.0.0.1:2380"
    )


def test_targets_that_do_not_resolve_are_skipped_and_the_last_error_kept() -> None:
    records = [("gone.keel.test.", 2380), ("m0.keel.test.", 2380)]
    resolver = FakeResolver({"_etcd-server-ssl._tcp.keel.test": records}, HOSTS)
    got = initial_cluster("keel.test", "", "a", ["https://10.0.0.1:2380"], resolver)
    assert got == "a=https://m0.keel.test:2380"
    resolver = FakeResolver({"_etcd-server-ssl._tcp.keel.test": records[:1]}, HOSTS)
    with pytest.raises(
        SrvDiscoveryError, match=r"for _etcd-server-ssl lookup gone\.keel\.test\. on"
    ):
        initial_cluster("keel.test", "", "a", ["https://10.0.0.1:2380"], resolver)


def test_an_own_url_that_does_not_resolve_is_go_s_error() -> None:
    resolver = FakeResolver({"_etcd-server-ssl._tcp.keel.test": SSL}, HOSTS)
    with pytest.raises(SrvDiscoveryError) as info:
        initial_cluster("keel.test", "", "a", ["https://nowhere:2380"], resolver)
    assert str(info.value) == "lookup nowhere on 127.0.0.1:53: no such host"


def test_the_system_resolver_reads_hosts_for_addresses() -> None:
    resolver = srv_discovery.SystemResolver()
    assert resolver.resolve_tcp_addr("127.0.0.1", 2380) == "127.0.0.1:2380"
    assert resolver.resolve_tcp_addr("::1", 2380) == "[::1]:2380"


def test_the_flags_reach_the_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[object, ...]] = []

    def fake(*args: object) -> str:
        seen.append(args)
        return "0=http://m0:1,me=http://127.0.0.1:2380"

    monkeypatch.setattr(srv_discovery, "initial_cluster", fake)
    args = daemon.parse_args(
        ["--name=me", "--discovery-srv=keel.test", "--discovery-srv-name=east",
         "--initial-advertise-peer-urls=http://127.0.0.1:2380"], {},
    )  # fmt: skip
    daemon.node_config(args)  # the member alone until discovery ran: no conflict
    found: argparse.Namespace = asyncio.run(daemon._discover_srv(args))
    assert seen == [("keel.test", "east", "me", ["http://127.0.0.1:2380"])]
    assert found.initial_cluster == "0=http://m0:1,me=http://127.0.0.1:2380"
    assert daemon.node_config(found).cluster.by_name("me").peer_urls == ["http://127.0.0.1:2380"]


def test_the_daemon_does_not_import_dnspython_until_asked() -> None:
    """dnspython's resolver costs ~190 ms to import: only --discovery-srv pays it."""
    code = "import sys, keel_store.daemon; print(sorted(m for m in sys.modules if m == 'dns'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
