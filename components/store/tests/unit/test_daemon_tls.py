"""etcd 3.4's TLS flags: auto TLS, CRLs, allowed CN/hostname, cipher suites. Handshakes
in memory and over loopback sockets; no processes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keel_core.testing import free_port
from keel_store import daemon
from keel_store.server import h2wire, tls, transport
from keel_store.server.grpc_server import GrpcServer

_NOW = datetime.datetime.now(datetime.UTC)


class PKI:
    """A CA (EC P-256: quick) issuing certificates into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
        ca = (
            self._builder(self.name, self.key.public_key(), 1)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca = directory / "ca.crt"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public: object, serial: int) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public)  # type: ignore[arg-type]
            .serial_number(serial)
            .not_valid_before(_NOW - datetime.timedelta(hours=1))
            .not_valid_after(_NOW + datetime.timedelta(days=1))
        )

    def issue(self, cn: str, serial: int, sans: list[str] = ["127.0.0.1"]) -> tuple[str, str]:  # noqa: B006
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for san in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (
            self._builder(subject, key.public_key(), serial)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        crt, pem = self.dir / f"{cn}-{serial}.crt", self.dir / f"{cn}-{serial}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return str(crt), str(pem)

    def crl(self, revoked: list[int], name: str = "ca.crl") -> str:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.name)
            .last_update(_NOW - datetime.timedelta(hours=1))
            .next_update(_NOW + datetime.timedelta(days=1))
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(_NOW - datetime.timedelta(minutes=5))
                .build()
            )
        path = self.dir / name
        path.write_bytes(
            builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        return str(path)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


def _client_context(
    pki: PKI | None, cert: tuple[str, str] | None = None, ciphers: str = ""
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if pki is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(pki.ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    if ciphers:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    return context


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake in memory; the server's SSLObject (ssl.SSLError if it fails)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    done = {id(s): False, id(c): False}
    for _ in range(20):
        for obj, out, other in ((c, c_out, s_in), (s, s_out, c_in)):
            if not done[id(obj)]:
                try:
                    obj.do_handshake()
                    done[id(obj)] = True
                except ssl.SSLWantReadError:
                    pass
            if data := out.read():
                other.write(data)
        if all(done.values()):
            return s
    raise AssertionError("handshake did not finish")


def _client_args(*flags: str) -> object:
    return daemon.parse_args(
        ["--listen-client-urls=https://127.0.0.1:2379", *flags], {"ETCD_NAME": "n1"}
    )


def test_tls_flag_errors_name_the_flag_and_the_file(tmp_path: Path, pki: PKI) -> None:
    cert, key = pki.issue("server", 2)
    files = [f"--cert-file={cert}", f"--key-file={key}", f"--trusted-ca-file={pki.ca}"]
    bad_crl = tmp_path / "garbage.crl"
    bad_crl.write_text("not a CRL\n")
    cases = [
        (["--cipher-suites=TLS_FOO"], r"--cipher-suites=TLS_FOO: unexpected TLS cipher suite"),
        ([*files, "--client-crl-file=/nope.crl"], r"--client-crl-file: /nope\.crl: no such file"),
        (
            [*files, f"--client-crl-file={bad_crl}"],
            rf"--client-crl-file: {bad_crl}: not a PEM or DER CRL",
        ),
        ([f"--cert-file={key}", f"--key-file={key}"], r"--cert-file=.*--key-file=.*not a PEM"),
        (["--cert-file=/nope.crt", f"--key-file={key}"], r"--cert-file: /nope\.crt: no such"),
        ([], r"https://127\.0\.0\.1:2379 needs --cert-file/--key-file or --auto-tls"),
    ]
    for flags, message in cases:
        with pytest.raises(daemon.FlagError, match=message):
            daemon.client_tls(_client_args(*flags))  # type: ignore[arg-type]
    peer = [f"--peer-cert-file={cert}", f"--peer-key-file={key}"]
    peer_cases = [
        ([*peer, "--peer-crl-file=/nope.crl"], r"--peer-crl-file: /nope\.crl: no such file"),
        ([*peer, f"--peer-crl-file={bad_crl}"], r"--peer-crl-file: .*not a PEM or DER CRL"),
        (
            [*peer, "--peer-cert-allowed-cn=a", "--peer-cert-allowed-hostname=b"],
            r"--peer-cert-allowed-cn=a and --peer-cert-allowed-hostname=b: give one",
        ),
        ([*peer, "--cipher-suites=TLS_RSA_WITH_NOPE"], r"--cipher-suites=TLS_RSA_WITH_NOPE"),
    ]
    for flags, message in peer_cases:
        with pytest.raises(daemon.FlagError, match=message):
            daemon.peer_tls(daemon.parse_args(flags, {}))
    # the flag takes no value (its effect: test_peer_san.py)
    args = daemon.parse_args(["--experimental-peer-skip-client-san-verification"], {})
    assert args.experimental_peer_skip_client_san_verification is True


def test_main_exits_2_before_serving_on_a_bad_tls_flag(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    status = daemon.main(
        [f"--data-dir={tmp_path / 'd'}", "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,X"]
    )
    assert status == 2
    assert "--cipher-suites=" in capsys.readouterr().err
    assert not (tmp_path / "d" / "member").exists()


def test_auto_tls_writes_a_self_signed_certificate_and_reuses_it(tmp_path: Path) -> None:
    args = daemon.parse_args(
        [
            f"--data-dir={tmp_path}",
            "--auto-tls",
            "--listen-client-urls=https://127.0.0.1:2379,https://node1.example:2379",
        ],
        {},
    )
    context = daemon.client_tls(args)
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE
    cert_path, key_path = (
        tmp_path / "fixtures/client/cert.pem",
        tmp_path / "fixtures/client/key.pem",
    )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["node1.example"]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp521r1"  # type: ignore[union-attr]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(days=365)
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "fixtures/client").stat().st_mode & 0o777 == 0o700
    # a client that skips verification (etcdctl --insecure-skip-tls-verify) gets in
    server = _handshake(context, _client_context(None))
    assert server.version() in ("TLSv1.2", "TLSv1.3")
    before = cert_path.read_bytes()
    daemon.client_tls(args)
    assert cert_path.read_bytes() == before, "reused, as etcd's SelfCert does"
    # given files win over --auto-tls
    given = daemon.parse_args(
        [
            f"--data-dir={tmp_path / 'other'}",
            "--auto-tls",
            "--cert-file=/nope.crt",
            "--key-file=/k",
        ],
        {},
    )
    with pytest.raises(daemon.FlagError, match=r"--cert-file: /nope\.crt: no such file"):
        daemon.client_tls(given)
    assert not (tmp_path / "other").exists()


def test_peer_auto_tls_neither_side_verifies(tmp_path: Path) -> None:
    args = daemon.parse_args(
        [
            f"--data-dir={tmp_path}",
            "--peer-auto-tls",
            "--listen-peer-urls=https://127.0.0.1:2380",
            "--peer-client-cert-auth",
        ],
        {},
    )
    server, client = daemon.peer_tls(args)
    assert server is not None
    assert client is not None
    assert (tmp_path / "fixtures/peer/cert.pem").is_file()
    assert client.verify_mode == ssl.CERT_NONE
    assert not client.check_hostname
    assert server.verify_mode == ssl.CERT_NONE  # etcd: auto TLS drops client cert auth
    # two members' generated certificates: each accepts the other's
    other = daemon.parse_args(
        [
            f"--data-dir={tmp_path / 'b'}",
            "--peer-auto-tls",
            "--listen-peer-urls=https://127.0.0.1:1",
        ],
        {},
    )
    server_b, client_b = daemon.peer_tls(other)
    assert server_b is not None
    assert client_b is not None
    _handshake(server, client_b)
    _handshake(server_b, client)


def test_cipher_suites_restrict_tls12_and_leave_tls13(pki: PKI) -> None:
    assert tls.openssl_ciphers(
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256"
    ) == ["ECDHE-ECDSA-AES128-GCM-SHA256"]
    cert, key = pki.issue("server", 2)
    args = _client_args(
        f"--cert-file={cert}",
        f"--key-file={key}",
        "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    )
    context = daemon.client_tls(args)  # type: ignore[arg-type]
    assert context is not None
    ok = _handshake(context, _client_context(pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    assert ok.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"  # type: ignore[index]
    with pytest.raises(ssl.SSLError):
        _handshake(context, _client_context(pki, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"))
    assert _handshake(context, _client_context(pki)).version() == "TLSv1.3"
    # only TLS 1.3 names: no TLS 1.2 suite is left, TLS 1.3 still works
    only13 = daemon.client_tls(
        _client_args(
            f"--cert-file={cert}", f"--key-file={key}", "--cipher-suites=TLS_AES_128_GCM_SHA256"
        )  # type: ignore[arg-type]
    )
    assert only13 is not None
    assert _handshake(only13, _client_context(pki)).version() == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        _handshake(only13, _client_context(pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))


def test_cert_policy_crl_and_allowed_names(pki: PKI, tmp_path: Path) -> None:
    def der(path: str) -> bytes:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        return cert.public_bytes(serialization.Encoding.DER)

    good, revoked = pki.issue("client", 10)[0], pki.issue("client", 11)[0]
    policy = tls.CertPolicy("client", crl_file=pki.crl([11]))
    assert policy.refusal(der(good), authenticated=True) is None
    assert policy.refusal(der(revoked), authenticated=True) == "certificate serial b revoked"
    pki.crl([10, 11])  # the file changes: read again
    assert policy.refusal(der(good), authenticated=True) == "certificate serial a revoked"
    by_cn = tls.CertPolicy("peer", allowed_cn="etcd-peer")
    assert by_cn.refusal(der(pki.issue("etcd-peer", 12)[0]), authenticated=True) is None
    assert "CN is not 'etcd-peer'" in str(by_cn.refusal(der(good), authenticated=True))
    assert by_cn.refusal(None, authenticated=True) is not None
    assert by_cn.refusal(None, authenticated=False) is None  # no client cert auth: no check
    host = pki.issue("h", 13, ["*.example.com", "10.0.0.1"])[0]
    for name, ok in [
        ("a.example.com", True),
        ("A.EXAMPLE.COM", True),
        ("a.b.example.com", False),
        ("example.com", False),
        ("10.0.0.1", True),
        ("10.0.0.2", False),
    ]:
        policy = tls.CertPolicy("client", allowed_hostname=name)
        assert (policy.refusal(der(host), authenticated=True) is None) is ok, name


async def _served(context: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    """Whether a gRPC port with ``context`` answers an HTTP/2 preface from ``client``."""
    server = GrpcServer(max_receive_message_length=1 << 20)
    port = free_port()
    server.add_secure_port(f"127.0.0.1:{port}", context)
    await server.start()
    try:
        client.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"
        )
        writer.write(h2wire.PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        try:
            data = await asyncio.wait_for(reader.read(9), 5)
        except (ConnectionError, ssl.SSLError):
            data = b""
        writer.close()
        return data[3:4] == b"\x04"  # the server's SETTINGS
    finally:
        await server.stop()


LOOPS = pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


@LOOPS
def test_client_port_refuses_revoked_and_not_allowed_certificates(
    pki: PKI, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    cert, key = pki.issue("server", 2)
    alice, mallory = pki.issue("alice", 20, ["alice.example"]), pki.issue("mallory", 21)
    flags = [f"--cert-file={cert}", f"--key-file={key}", f"--trusted-ca-file={pki.ca}"]
    crl = pki.crl([21])

    def served(extra: list[str], who: tuple[str, str]) -> bool:
        context = daemon.client_tls(_client_args(*flags, "--client-cert-auth", *extra))  # type: ignore[arg-type]
        assert context is not None
        with asyncio.Runner(loop_factory=new_loop) as runner:
            return runner.run(_served(context, _client_context(pki, who)))

    assert served([], mallory), "no CRL: served"
    assert not served([f"--client-crl-file={crl}"], mallory)
    assert served([f"--client-crl-file={crl}"], alice)
    assert served(["--client-cert-allowed-hostname=alice.example"], alice)
    assert not served(["--client-cert-allowed-hostname=alice.example"], mallory)


def peer_contexts(
    pki: PKI, cert: tuple[str, str], *extra: str
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A member's peer TLS contexts (server, client) for ``cert``, with client
    certificates required, as ``--peer-*`` flags make them."""
    args = daemon.parse_args(
        [
            f"--peer-cert-file={cert[0]}",
            f"--peer-key-file={cert[1]}",
            f"--peer-trusted-ca-file={pki.ca}",
            "--peer-client-cert-auth",
            *extra,
        ],
        {},
    )
    server, client = daemon.peer_tls(args)
    assert server is not None
    assert client is not None
    return server, client


async def delivered(
    a: tuple[ssl.SSLContext, ssl.SSLContext], b: tuple[ssl.SSLContext, ssl.SSLContext]
) -> bool:
    """Whether member 1 (peer contexts ``a``: server, client; dialling from 127.0.0.1)
    gets a frame to member 2 (contexts ``b``) within 1.5 s."""
    got: list[bytes] = []
    one = transport.PeerTransport(1, "tok", lambda s, k, p: None)
    two = transport.PeerTransport(2, "tok", lambda s, k, p: got.append(p))
    one.server_ssl, one.client_ssl = a
    two.server_ssl, two.client_ssl = b
    url_a, url_b = f"https://127.0.0.1:{free_port()}", f"https://127.0.0.1:{free_port()}"
    await one.listen(url_a)
    await two.listen(url_b)
    one.set_peers({1: url_a, 2: url_b})
    try:
        for _ in range(30):
            one.send(2, transport.RAFT, b"hello")
            await asyncio.sleep(0.05)
            if got:
                return True
        return False
    finally:
        await one.close()
        await two.close()


@LOOPS
def test_peer_transport_refuses_a_peer_without_the_allowed_cn_or_revoked(
    pki: PKI, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    good = pki.issue("etcd-peer", 30)
    intruder = pki.issue("intruder", 31)
    crl = pki.crl([31])

    def run(cert: tuple[str, str], *b_extra: str) -> bool:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            b = peer_contexts(pki, good, *b_extra)
            return runner.run(delivered(peer_contexts(pki, cert), b))

    assert run(good, "--peer-cert-allowed-cn=etcd-peer")
    assert not run(intruder, "--peer-cert-allowed-cn=etcd-peer")
    assert run(intruder), "without the flags the CA is enough"
    assert not run(intruder, f"--peer-crl-file={crl}")
    assert run(good, f"--peer-crl-file={crl}")


def test_flags_without_effect_are_warned_about(
    pki: PKI, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cert, key = pki.issue("server", 2)
    crl = pki.crl([])
    with caplog.at_level("WARNING", logger="keel_store"):
        daemon.client_tls(
            _client_args(f"--cert-file={cert}", f"--key-file={key}", f"--client-crl-file={crl}")  # type: ignore[arg-type]
        )
        daemon.client_tls(
            _client_args(f"--data-dir={tmp_path}", "--auto-tls", "--client-cert-auth")  # type: ignore[arg-type]
        )
    messages = [r.getMessage() for r in caplog.records]
    assert "--client-crl-file: no effect without --client-cert-auth" in messages[0]
    assert "--auto-tls: ignoring --client-cert-auth" in messages[1]
