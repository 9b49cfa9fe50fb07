"""etcd's check of a peer's client certificate SANs against the address it connects from
(``keel_store.server.san_check``), and ``--experimental-peer-skip-client-san-verification``.

Only names in /etc/hosts (``localhost``) go to the system resolver; every other lookup is
answered by a fake resolver, so no DNS query leaves the machine."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keel_store import daemon
from keel_store.server import san_check, tls

from .test_daemon_tls import (
    LOOPS,
    PKI,
    _client_args,
    _client_context,
    _served,
    delivered,
    peer_contexts,
)

_NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


def _cert(sans: list[x509.GeneralName] | None) -> x509.Certificate:
    """A self-signed certificate with these SANs (None: no SAN extension at all)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(_NOW - datetime.timedelta(hours=1))
        .not_valid_after(_NOW + datetime.timedelta(days=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def _ip(text: str) -> x509.GeneralName:
    return x509.IPAddress(ipaddress.ip_address(text))


class FakeResolver:
    """Answers from two tables; a missing entry fails as the system resolver does."""

    def __init__(
        self, ptr: dict[str, list[str]] | None = None, hosts: dict[str, list[str]] | None = None
    ) -> None:
        self.ptr = ptr or {}
        self.hosts = hosts or {}
        self.asked: list[str] = []

    async def reverse(self, host: str) -> list[str]:
        self.asked.append(f"ptr {host}")
        if host not in self.ptr:
            raise socket.herror(1, "Unknown host")
        return self.ptr[host]

    async def forward(self, name: str) -> list[str]:
        self.asked.append(f"host {name}")
        if name not in self.hosts:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.hosts[name]


class ForwardOnly(san_check.SystemResolver):
    """The system resolver without the reverse lookup: only a forward lookup can match."""

    async def reverse(self, host: str) -> list[str]:
        return []


def _check(cert: x509.Certificate, host: str, resolver: object | None = None) -> str | None:
    return asyncio.run(san_check.check_cert_san(cert, host, resolver))  # type: ignore[arg-type]


def test_ip_san_must_be_the_remote_address() -> None:
    fake = FakeResolver()
    assert _check(_cert([_ip("127.0.0.1")]), "127.0.0.1", fake) is None
    assert _check(_cert([_ip("127.0.0.2")]), "127.0.0.1", fake) == (
        "x509: certificate is valid for 127.0.0.2, not 127.0.0.1"  # Go's HostnameError
    )
    both = _cert([_ip("127.0.0.2"), _ip("::1")])
    assert _check(both, "::1", fake) is None
    assert _check(both, "127.0.0.3", fake) == (
        "x509: certificate is valid for 127.0.0.2, ::1, not 127.0.0.3"
    )
    assert fake.asked == [], "IP SANs alone are decided without a lookup"
    # a dual-stack listener reports an IPv4 peer as ::ffff:a.b.c.d; Go compares it as IPv4
    assert san_check.remote_host(("::ffff:127.0.0.1", 5, 0, 0)) == "127.0.0.1"
    assert _check(_cert([_ip("127.0.0.1")]), "::ffff:127.0.0.1", fake) is None


def test_no_ip_or_dns_san_passes() -> None:
    fake = FakeResolver()
    assert _check(_cert(None), "127.0.0.1", fake) is None
    assert _check(_cert([x509.RFC822Name("a@example.com")]), "127.0.0.1", fake) is None
    assert fake.asked == []


def test_dns_san_by_forward_lookup_of_localhost() -> None:
    localhost = _cert([x509.DNSName("localhost")])
    # the system resolver (from /etc/hosts): localhost -> 127.0.0.1
    assert _check(localhost, "127.0.0.1", ForwardOnly()) is None
    assert _check(localhost, "127.0.0.1") is None  # reverse (PTR) or forward, as etcd
    # an IP SAN that does not match, then the DNS names decide
    mixed = _cert([_ip("127.0.0.9"), x509.DNSName("localhost")])
    assert _check(mixed, "127.0.0.1", ForwardOnly()) is None


def test_dns_san_by_reverse_lookup_and_wildcards() -> None:
    fake = FakeResolver(ptr={"10.1.1.1": ["node1.peers.example."]})
    assert _check(_cert([x509.DNSName("node1.peers.example")]), "10.1.1.1", fake) is None
    assert _check(_cert([x509.DNSName("*.peers.example")]), "10.1.1.1", fake) is None
    # as etcd: a wildcard is a suffix match on the PTR name, never looked up forward
    assert _check(_cert([x509.DNSName("*.example")]), "10.1.1.1", fake) is None
    fake.asked.clear()
    assert _check(_cert([x509.DNSName("*.other.example")]), "10.1.1.1", fake) is not None
    assert fake.asked == ["ptr 10.1.1.1"]


def test_dns_san_mismatch_gives_etcds_error_with_the_last_lookup_error() -> None:
    fake = FakeResolver(hosts={"a.example": ["10.0.0.5"]})
    cert = _cert([x509.DNSName("a.example"), x509.DNSName("b.example")])
    assert _check(cert, "10.0.0.6", fake) == (
        'tls: "10.0.0.6" does not match any of DNSNames ["a.example" "b.example"]'
        " (lookup b.example: Name or service not known)"
    )
    assert fake.asked == ["ptr 10.0.0.6", "host a.example", "host b.example"]
    assert _check(cert, "10.0.0.5", fake) is None
    only_ptr_fails = FakeResolver(hosts={"a.example": ["10.0.0.5"], "b.example": []})
    assert _check(cert, "10.0.0.6", only_ptr_fails) == (
        'tls: "10.0.0.6" does not match any of DNSNames ["a.example" "b.example"]'
        " (lookup 10.0.0.6: Unknown host)"
    )
    # IP SANs that do not match and DNS names that do not either: the DNS error
    mixed = _cert([_ip("127.0.0.2"), x509.DNSName("a.example")])
    assert str(_check(mixed, "10.0.0.6", fake)).startswith('tls: "10.0.0.6" does not match')


@LOOPS
def test_peer_listener_refuses_a_certificate_not_for_the_address_unless_skipped(
    pki: PKI,
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tls, "_logged", {})  # no rate limit left from another test
    server_cert = pki.issue("b", 40)
    checking = peer_contexts(pki, server_cert)[0]
    skipping = peer_contexts(pki, server_cert, "--experimental-peer-skip-client-san-verification")[
        0
    ]
    assert checking.check_client_san  # type: ignore[attr-defined]
    assert not skipping.check_client_san  # type: ignore[attr-defined]
    elsewhere = pki.issue("a", 41, ["127.0.0.2"])  # it dials from 127.0.0.1
    here = pki.issue("a", 42, ["127.0.0.1"])
    by_name = pki.issue("a", 43, ["localhost"])  # decided by a lookup (/etc/hosts)
    no_match = pki.issue("a", 44, ["peer.example"])

    b_client = peer_contexts(pki, server_cert)[1]

    def run(cert: tuple[str, str], server: ssl.SSLContext) -> bool:
        """Whether a member with ``cert`` (dialling from 127.0.0.1) gets a frame to one
        whose peer listener has ``server``."""
        with asyncio.Runner(loop_factory=new_loop) as runner:
            return runner.run(delivered(peer_contexts(pki, cert), (server, b_client)))

    with caplog.at_level("WARNING", logger="keel_store.tls"):
        assert not run(elsewhere, checking)
    assert "rejected connection: x509: certificate is valid for 127.0.0.2, not 127.0.0.1" in [
        r.getMessage() for r in caplog.records
    ]
    assert run(elsewhere, skipping), "--experimental-peer-skip-client-san-verification"
    assert run(here, checking)
    assert run(by_name, checking), "reading resumes after the lookup"
    monkeypatch.setattr(san_check, "default_resolver", FakeResolver())
    assert not run(no_match, checking), "refused after the lookup"
    assert run(no_match, skipping)


@LOOPS
def test_client_port_does_not_check_client_sans(
    pki: PKI, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """etcd 3.4 runs the check on its peer listener only (serve.go: NewTLSListener)."""
    cert, key = pki.issue("server", 2)
    context = daemon.client_tls(
        _client_args(  # type: ignore[arg-type]
            f"--cert-file={cert}",
            f"--key-file={key}",
            f"--trusted-ca-file={pki.ca}",
            "--client-cert-auth",
        )
    )
    assert context is not None
    assert not context.check_client_san
    elsewhere = pki.issue("client", 50, ["127.0.0.2"])
    with asyncio.Runner(loop_factory=new_loop) as runner:
        assert runner.run(_served(context, _client_context(pki, elsewhere)))


def _checks_sans(argv: list[str], environ: dict[str, str]) -> bool:
    server, _ = daemon.peer_tls(daemon.parse_args(argv, environ))
    assert server is not None
    return server.check_client_san


def test_skip_flag_from_the_environment_and_the_config_file(pki: PKI, tmp_path: Path) -> None:
    cert, key = pki.issue("peer", 60)
    files = [
        f"--peer-cert-file={cert}",
        f"--peer-key-file={key}",
        f"--peer-trusted-ca-file={pki.ca}",
    ]
    assert _checks_sans(files, {})
    assert not _checks_sans(files, {"ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION": "true"})
    conf = tmp_path / "etcd.conf.yml"
    conf.write_text(
        "peer-transport-security:\n"
        f"  cert-file: {cert}\n"
        f"  key-file: {key}\n"
        f"  trusted-ca-file: {pki.ca}\n"
        "experimental-peer-skip-client-san-verification: true\n"
    )
    assert not _checks_sans([f"--config-file={conf}"], {})
    conf.write_text(conf.read_text().replace(": true", ": false"))
    assert _checks_sans([f"--config-file={conf}"], {})
