"""--discovery-srv: members bootstrap from DNS SRV records, as etcd's do.

A real DNS server (``srv_dns.py``, dnspython's wire format) answers SRV and A records
for ``keel.test``. Everything runs in a network namespace of the test's own, whose
``/etc/resolv.conf`` (``/etc/netns/NAME/resolv.conf``, bind-mounted by ``ip netns
exec``) names that server on 127.0.0.1: Go's resolver in etcd and etcdctl and
dnspython in keel-store ask it, and no packet leaves the namespace's loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keel_core.testing import free_port

from .conftest import ETCD, ETCDCTL, Proc

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

DOMAIN = "keel.test"
DNS_SERVER = Path(__file__).with_name("srv_dns.py")


@dataclass
class Netns:
    """The namespace, its DNS server's zone file, and commands run inside it."""

    name: str
    zone: Path

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def records(self, *records: tuple[str, str, str]) -> None:
        """(name, type, data) records of the zone; names relative to ``DOMAIN``."""
        zone = [{"name": f"{n}.{DOMAIN}.", "type": t, "data": d} for n, t, d in records]
        self.zone.write_text(json.dumps(zone))

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.wrap([ETCDCTL, "--dial-timeout=3s", "--command-timeout=10s", *args]),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "ETCDCTL_API": "3"},
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed:\n{result.stderr}")
        return result


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Netns]:
    """A network namespace with loopback up and a DNS server on 127.0.0.1:53 in it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip for network namespaces")
    name = f"keelsrv{os.getpid()}"
    etc = Path("/etc/netns") / name
    made = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"ip netns add failed: {made.stderr.strip()}")
    dns: subprocess.Popen[str] | None = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
        ns = Netns(name, tmp_path / "zone.json")
        ns.records()
        dns = subprocess.Popen(
            ns.wrap([sys.executable, str(DNS_SERVER), str(ns.zone)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert dns.stdout is not None
        assert dns.stdout.readline().startswith("READY"), "the DNS server did not start"
        yield ns
    finally:
        if dns is not None:
            dns.kill()
            dns.wait(10)
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)


def _member(ns: Netns, tmp: Path, binary: str, name: str, peer: str, *extra: str) -> Proc:
    client = f"http://127.0.0.1:{free_port()}"
    flags = [
        f"--name={name}", f"--data-dir={tmp / binary / name}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--discovery-srv={DOMAIN}", "--initial-cluster-token=srv-test", *extra,
    ]  # fmt: skip
    if peer.startswith("https://"):
        flags.append("--peer-auto-tls")
    argv = (
        [sys.executable, "-m", "keel_store.daemon", *flags]
        if binary == "keel"
        else [ETCD, *flags, "--logger=zap", "--log-outputs=stderr"]
    )
    return Proc(name, ns.wrap(argv), client, tmp / binary / name, tmp / f"{binary}-{name}.log")


def _start_named(netns: Netns, members: list[Proc]) -> None:
    """Start the members, wait until each is healthy and they know each other as
    m0, m1, m2 (the names the records gave them)."""
    for m in members:
        m.start()
    for m in members:
        _wait_healthy(netns, m)
    assert _names(netns, members[0].endpoint, ["m0", "m1", "m2"]) == ["m0", "m1", "m2"]


def _wait_healthy(ns: Netns, member: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert member.alive, f"{member.name} exited:\n{member.log_path.read_text()[-3000:]}"
        if (
            ns.etcdctl(
                f"--endpoints={member.endpoint}", "endpoint", "health", check=False
            ).returncode
            == 0
        ):
            return
        time.sleep(0.5)
    raise AssertionError(f"{member.name} not healthy:\n{member.log_path.read_text()[-3000:]}")


def _names(ns: Netns, endpoint: str, want: list[str]) -> list[str]:
    """The members' names (polled: each announces its own after connecting)."""
    names: list[str] = []
    for _ in range(40):
        out = ns.etcdctl(f"--endpoints={endpoint}", "member", "list", "-w", "json").stdout
        names = sorted(m.get("name", "") for m in json.loads(out)["members"])
        if names == want:
            break
        time.sleep(0.5)
    return names


def _log_text(member: Proc) -> str:
    """The log with JSON lines decoded (their quotes unescaped), one value a line."""
    out = []
    for line in member.log_path.read_text().splitlines():
        try:
            out += [str(v) for v in json.loads(line).values()]
        except (ValueError, AttributeError):
            out.append(line)
    return "\n".join(out)


def _exit_status(member: Proc, timeout: float = 30) -> int:
    """The member's exit status; one still running after ``timeout`` is killed."""
    assert member.proc is not None
    try:
        return member.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        member.kill()
        raise AssertionError(f"{member.name} still running after {timeout} s") from None


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_three_members_bootstrap_from_srv_records(
    tmp_path: Path, netns: Netns, binary: str
) -> None:
    """``_etcd-server-ssl-east._tcp`` (with --discovery-srv-name=east) lists three
    https peers on 127.0.0.1, told apart by port; the records without the suffix list
    others, so a member that ignored the name would not find itself."""
    ports = [free_port() for _ in range(3)]
    peers = [f"https://127.0.0.1:{p}" for p in ports]
    members = [
        _member(netns, tmp_path, binary, f"m{i}", peers[i], "--discovery-srv-name=east")
        for i in range(3)
    ]
    east = [
        ("_etcd-server-ssl-east._tcp", "SRV", f"0 0 {p} m{i}.{DOMAIN}.")
        for i, p in enumerate(ports)
    ]
    others = [
        ("_etcd-server-ssl._tcp", "SRV", f"0 0 {free_port()} m{i}.{DOMAIN}.") for i in range(3)
    ]
    clients = [
        ("_etcd-client-east._tcp", "SRV", f"0 0 {m.endpoint.split(':')[1]} c.{DOMAIN}.")
        for m in members
    ]
    netns.records(
        *east, *others, *clients, ("c", "A", "127.0.0.1"),
        *[(f"m{i}", "A", "127.0.0.1") for i in range(3)],
    )  # fmt: skip
    try:
        _start_named(netns, members)
        listed = netns.etcdctl(f"--endpoints={members[1].endpoint}", "member", "list").stdout
        for i, port in enumerate(ports):  # peer URLs as the records name them
            assert f"https://m{i}.{DOMAIN}:{port}" in listed
        # etcdctl finds the members through _etcd-client-east._tcp.
        srv = [f"--discovery-srv={DOMAIN}", "--discovery-srv-name=east"]
        netns.etcdctl(*srv, "put", "via", "srv")
        assert netns.etcdctl(*srv, "get", "via", "--print-value-only").stdout.strip() == "srv"
        got = netns.etcdctl(
            f"--endpoints={members[2].endpoint}", "get", "via", "--print-value-only"
        )
        assert got.stdout.strip() == "srv"
    finally:
        for m in members:
            m.kill()


def test_plain_http_records_bootstrap_keel_store_but_not_etcd_3_4(
    tmp_path: Path, netns: Netns
) -> None:
    """``_etcd-server._tcp`` (http) alone: keel-store bootstraps from it, as etcd
    documents; etcd 3.4.23 ignores those records (inverted check, fixed in 3.5) and
    fails on the missing ssl records."""
    ports = [free_port() for _ in range(3)]
    netns.records(
        *[("_etcd-server._tcp", "SRV", f"0 0 {p} m{i}.{DOMAIN}.") for i, p in enumerate(ports)],
        *[(f"m{i}", "A", "127.0.0.1") for i in range(3)],
    )  # fmt: skip
    members = [
        _member(netns, tmp_path, "keel", f"m{i}", f"http://127.0.0.1:{p}")
        for i, p in enumerate(ports)
    ]
    try:
        _start_named(netns, members)
        netns.etcdctl(f"--endpoints={members[0].endpoint}", "put", "k", "plain")
        got = netns.etcdctl(f"--endpoints={members[2].endpoint}", "get", "k", "--print-value-only")
        assert got.stdout.strip() == "plain"
    finally:
        for m in members:
            m.kill()
    etcd = _member(netns, tmp_path, "etcd", "m0", f"http://127.0.0.1:{ports[0]}")
    etcd.start()
    assert _exit_status(etcd) == 1
    assert (
        f"error querying DNS SRV records for _etcd-server-ssl lookup _etcd-server-ssl._tcp.{DOMAIN}"
        " on 127.0.0.1:53: no such host" in _log_text(etcd)
    )


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_srv_discovery_errors_are_etcds(tmp_path: Path, netns: Netns, binary: str) -> None:
    port = free_port()
    netns.records(
        ("_etcd-server-ssl._tcp", "SRV", f"0 0 {port} m0.{DOMAIN}."),
        ("m0", "A", "127.0.0.1"),
    )
    cases = [
        # No records for the service asked.
        (["--discovery-srv-name=west"], 1,
         f"error querying DNS SRV records for _etcd-server-ssl-west lookup"
         f" _etcd-server-ssl-west._tcp.{DOMAIN} on 127.0.0.1:53: no such host"),
        # Records, but not this member's address and port.
        ([], 1, 'cannot find local etcd member "lost" in SRV records'),
        # The member's own URL is https in the records, http here.
        (["--name=m0"], 1,
         f"bootstrap at https://m0.{DOMAIN}:{port} from DNS for etcd-server-ssl has scheme"
         f" mismatch with expected peer http://127.0.0.1:{port}"),
    ]  # fmt: skip
    for i, (extra, status, message) in enumerate(cases):
        peer = f"https://127.0.0.1:{free_port()}" if i == 1 else f"http://127.0.0.1:{port}"
        member = _member(netns, tmp_path, binary, "lost", peer, *extra)
        member.start()
        assert _exit_status(member) == status, member.log_path.read_text()
        assert message in _log_text(member)
        member.log_path.unlink()
    both = _member(
        netns,
        tmp_path,
        binary,
        "both",
        f"http://127.0.0.1:{port}",
        "--initial-cluster=both=http://h:1",
    )
    both.start()
    assert _exit_status(both) == (2 if binary == "keel" else 1)  # keel: 2 for every bad flag
    assert "multiple discovery or bootstrap flags are set" in _log_text(both)
