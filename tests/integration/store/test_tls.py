"""Client and peer TLS: a 3-member cluster speaking TLS everywhere, etcdctl with certificates."""

from __future__ import annotations

import datetime
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .conftest import Cluster, TLSFiles, etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]


def test_tls_cluster(make_cluster, tmp_path) -> None:
    tls = TLSFiles(tmp_path / "pki")
    cluster = make_cluster(3, tls=tls)
    a, b = cluster.members[0].endpoint, cluster.members[1].endpoint
    assert etcdctl(a, *tls.etcdctl_args(), "put", "secret", "s3").stdout.strip() == "OK"
    got = etcdctl(b, *tls.etcdctl_args(), "get", "secret", "--print-value-only")
    assert got.stdout.strip() == "s3", "replicated over TLS peer links"
    # Without a client certificate the member refuses (--client-cert-auth).
    r = etcdctl(a, f"--cacert={tls.ca}", "get", "secret", check=False, timeout=30)
    assert r.returncode != 0
    # Plain text to a TLS port fails too.
    r = etcdctl(a, "get", "secret", check=False, timeout=30)
    assert r.returncode != 0


AUTO_CTL = ["--insecure-transport=false", "--insecure-skip-tls-verify"]
"""etcdctl against a generated (auto TLS) certificate: TLS, no verification."""


def _crl(tls: TLSFiles, revoked: list[Path]) -> Path:
    """A PEM CRL from the test CA revoking the certificates ``revoked``."""
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - datetime.timedelta(hours=1))
        .next_update(now + datetime.timedelta(days=1))
    )
    for path in revoked:
        serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - datetime.timedelta(minutes=5))
            .build()
        )
    out = tls.dir / "ca.crl"
    out.write_bytes(
        builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]
    )
    return out


def _with(tls: TLSFiles, cert: Path, key: Path) -> list[str]:
    return [f"--cacert={tls.ca}", f"--cert={cert}", f"--key={key}"]


def test_auto_tls_single_member_serves_tls_and_reuses_its_certificate(make_cluster) -> None:
    cluster = make_cluster(1, scheme="https", ctl=AUTO_CTL, extra=["--auto-tls"])
    m = cluster.members[0]
    assert etcdctl(m.endpoint, *AUTO_CTL, "put", "k", "v").stdout.strip() == "OK"
    got = etcdctl(m.endpoint, *AUTO_CTL, "get", "k", "--print-value-only")
    assert got.stdout.strip() == "v"
    r = etcdctl(m.endpoint, "get", "k", check=False, timeout=30)
    assert r.returncode != 0, "plain text to the TLS port fails"
    cert = m.data_dir / "fixtures" / "client" / "cert.pem"
    assert (m.data_dir / "fixtures" / "client" / "key.pem").is_file()
    before = cert.read_bytes()
    m.kill(signal.SIGTERM)
    m.start()
    cluster.wait_ready(m)
    assert cert.read_bytes() == before, "the generated certificate is reused (as etcd)"
    got = etcdctl(m.endpoint, *AUTO_CTL, "get", "k", "--print-value-only")
    assert got.stdout.strip() == "v"


def test_peer_auto_tls_cluster_forms_and_replicates(make_cluster) -> None:
    cluster = make_cluster(3, scheme="https", ctl=AUTO_CTL, extra=["--auto-tls", "--peer-auto-tls"])
    a, b = cluster.members[0], cluster.members[2]
    assert etcdctl(a.endpoint, *AUTO_CTL, "put", "replicated", "yes").stdout.strip() == "OK"
    got = etcdctl(b.endpoint, *AUTO_CTL, "get", "replicated", "--print-value-only")
    assert got.stdout.strip() == "yes"
    for m in cluster.members:
        assert (m.data_dir / "fixtures" / "peer" / "cert.pem").is_file()
        assert (m.data_dir / "fixtures" / "peer" / "key.pem").is_file()


def _no_cluster_forms(cluster: Cluster, tls: TLSFiles) -> None:
    """Start every member; each stays up, but none has a leader: no peer connection
    is accepted."""
    for m in cluster.members:
        m.start()
    time.sleep(4)  # several election timeouts
    for m in cluster.members:
        assert m.alive
        r = etcdctl(m.endpoint, *tls.etcdctl_args(), "endpoint", "health", check=False)
        assert r.returncode != 0, "no leader without peers"


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_client_crl_refuses_a_revoked_certificate(make_cluster, tmp_path, binary) -> None:
    tls = TLSFiles(tmp_path / "pki")
    revoked = tls.issue("revoked", "extendedKeyUsage=clientAuth")
    crl = _crl(tls, [revoked[0]])
    cluster = make_cluster(1, binary, tls=tls, extra=[f"--client-crl-file={crl}"])
    m = cluster.members[0]
    assert etcdctl(m.endpoint, *tls.etcdctl_args(), "put", "k", "v").stdout.strip() == "OK"
    r = etcdctl(m.endpoint, *_with(tls, *revoked), "get", "k", check=False, timeout=30)
    assert r.returncode != 0, r.stdout


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_client_cert_allowed_hostname(make_cluster, tmp_path, binary) -> None:
    tls = TLSFiles(tmp_path / "pki")
    alice = tls.issue("alice", "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:alice.example")
    cluster = make_cluster(
        1,
        binary,
        tls=tls,
        ctl=_with(tls, *alice),
        extra=["--client-cert-allowed-hostname=alice.example"],
    )
    m = cluster.members[0]
    assert etcdctl(m.endpoint, *_with(tls, *alice), "put", "k", "v").stdout.strip() == "OK"
    r = etcdctl(m.endpoint, *tls.etcdctl_args(), "get", "k", check=False, timeout=30)
    assert r.returncode != 0, "the CA's other client certificate has no alice.example SAN"


def test_peer_cert_allowed_cn(make_cluster, tmp_path) -> None:
    tls = TLSFiles(tmp_path / "pki")
    # the peers' certificate has CN=server
    cluster = make_cluster(3, tls=tls, extra=["--peer-cert-allowed-cn=server"])
    a, b = cluster.members[0].endpoint, cluster.members[1].endpoint
    assert etcdctl(a, *tls.etcdctl_args(), "put", "cn", "ok").stdout.strip() == "OK"
    got = etcdctl(b, *tls.etcdctl_args(), "get", "cn", "--print-value-only")
    assert got.stdout.strip() == "ok"
    (tmp_path / "refused").mkdir()
    refused = Cluster(tmp_path / "refused", 3, tls=tls, extra=["--peer-cert-allowed-cn=nobody"])
    try:
        _no_cluster_forms(refused, tls)
        assert "certificate CN is not 'nobody'" in refused.members[0].log_path.read_text()
    finally:
        refused.stop()


def test_cipher_suites_restrict_tls12_on_the_client_port(make_cluster, tmp_path) -> None:
    tls = TLSFiles(tmp_path / "pki")  # RSA keys
    cluster = make_cluster(
        3, tls=tls, extra=["--cipher-suites=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]
    )
    a, b = cluster.members[0].endpoint, cluster.members[1].endpoint
    assert etcdctl(a, *tls.etcdctl_args(), "put", "c", "1").stdout.strip() == "OK"
    assert etcdctl(b, *tls.etcdctl_args(), "get", "c", "--print-value-only").stdout.strip() == "1"
    host, port = a.rsplit(":", 1)

    def tls12(cipher: str) -> str | None:
        context = ssl.create_default_context(cafile=str(tls.ca))
        context.load_cert_chain(tls.client_cert, tls.client_key)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(cipher)
        try:
            with (
                socket.create_connection((host, int(port)), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=host) as conn,
            ):
                return conn.cipher()[0]  # type: ignore[index]
        except ssl.SSLError:
            return None

    assert tls12("ECDHE-RSA-AES256-GCM-SHA384") == "ECDHE-RSA-AES256-GCM-SHA384"
    assert tls12("ECDHE-RSA-AES128-GCM-SHA256") is None


SAN_ERROR = "x509: certificate is valid for 127.0.0.2, not 127.0.0.1"
"""What etcd logs (and keel-store after "rejected connection: ") for a peer whose client
certificate names only 127.0.0.2 connecting from 127.0.0.1."""


def _on_127_0_0_2(
    tmp: Path, binary: str, tls: TLSFiles, which: list[int], extra: list[str]
) -> Cluster:
    """Three members with peer TLS; the members ``which`` listen for peers on 127.0.0.2
    with a peer certificate for IP 127.0.0.2 only. Connections to 127.0.0.x leave from
    127.0.0.1 (the loopback route's source), which those certificates do not name."""
    tmp.mkdir()
    cluster = Cluster(tmp, 3, binary, tls=tls, extra=extra)
    cert, key = tls.dir / "only-127.0.0.2.crt", tls.dir / "only-127.0.0.2.key"
    if not cert.exists():
        cert, key = tls.issue("only-127.0.0.2", "subjectAltName=IP:127.0.0.2")
    for i in which:
        m = cluster.members[i]
        flag = next(a for a in m.argv if a.startswith("--initial-advertise-peer-urls="))
        old_url = flag.split("=", 1)[1]
        new_url = old_url.replace("://127.0.0.1:", "://127.0.0.2:")
        for other in cluster.members:
            other.argv = [a.replace(old_url, new_url) for a in other.argv]
        m.argv += [f"--peer-cert-file={cert}", f"--peer-key-file={key}"]  # the last one wins
    return cluster


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_peer_client_san_not_the_address_no_cluster_unless_skipped(tmp_path, binary) -> None:
    """Every member's peer certificate names 127.0.0.2 only: every peer connection is
    refused, by etcd and keel-store alike; with the skip flag both clusters form."""
    tls = TLSFiles(tmp_path / "pki")
    refused = _on_127_0_0_2(tmp_path / "checked", binary, tls, [0, 1, 2], [])
    try:
        _no_cluster_forms(refused, tls)
        for m in refused.members:
            assert SAN_ERROR in m.log_path.read_text(), m.name
    finally:
        refused.stop()
    skip = ["--experimental-peer-skip-client-san-verification=true"]
    skipped = _on_127_0_0_2(tmp_path / "skipped", binary, tls, [0, 1, 2], skip)
    try:
        skipped.start()  # every member healthy
        m0, m2 = skipped.members[0], skipped.members[2]
        assert etcdctl(m0.endpoint, *tls.etcdctl_args(), "put", "k", "v").stdout.strip() == "OK"
        got = etcdctl(m2.endpoint, *tls.etcdctl_args(), "get", "k", "--print-value-only")
        assert got.stdout.strip() == "v"
        assert SAN_ERROR not in m0.log_path.read_text()
    finally:
        skipped.stop()


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_peer_client_san_one_member_refused_by_its_peers(tmp_path, binary) -> None:
    """Only m2's certificate names 127.0.0.2: m0 and m1 refuse the connections m2
    opens, and log it alike. (etcd's m2 still works, as its peers' own connections to
    it carry its messages too; keel-store's peers send only on connections they open,
    so there m2 is cut off: not asserted.)"""
    tls = TLSFiles(tmp_path / "pki")
    cluster = _on_127_0_0_2(tmp_path / "checked", binary, tls, [2], [])
    try:
        for m in cluster.members:
            m.start()
        m0, m1, _ = cluster.members
        cluster.wait_ready(m0)
        cluster.wait_ready(m1)  # two of three: a quorum
        assert etcdctl(m0.endpoint, *tls.etcdctl_args(), "put", "k", "v").stdout.strip() == "OK"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(SAN_ERROR in m.log_path.read_text() for m in (m0, m1)):
                break
            time.sleep(0.2)
        for m in (m0, m1):
            assert SAN_ERROR in m.log_path.read_text(), m.name
    finally:
        cluster.stop()
