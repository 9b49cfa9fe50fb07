"""TLS as etcd 3.4 sets it up (``pkg/transport``): auto TLS, CRLs, allowed CN/hostname
of a client certificate, and Go's cipher suite names.

Python's ``ssl`` has no certificate callback, so the checks etcd makes in Go's
``VerifyPeerCertificate`` (allowed CN, allowed hostname) and after the handshake (the
CRL) are made when the handshake is done: :func:`refused` is called by the protocols
from ``connection_made`` and closes a connection whose certificate fails them. The
client sees the connection closed before any request is served, as with etcd.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("keel_store.tls")

TLS13 = "tls1.3"
"""Marks Go names of TLS 1.3 suites: Go does not let them be configured (always on)."""

GO_CIPHER_SUITES: dict[str, str] = {
    # Go's tls.CipherSuites() and tls.InsecureCipherSuites() names -> OpenSSL's.
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    # etcd's tlsutil also takes these two spellings
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": TLS13,
    "TLS_AES_256_GCM_SHA384": TLS13,
    "TLS_CHACHA20_POLY1305_SHA256": TLS13,
}


def openssl_ciphers(text: str) -> list[str]:
    """OpenSSL names (TLS 1.2) for a comma-separated list of Go cipher suite names, in
    order; TLS 1.3 names are accepted and dropped (Go ignores them too). ValueError
    naming the first unknown name (etcd: ``unexpected TLS cipher suite "X"``)."""
    names: list[str] = []
    for go_name in (n.strip() for n in text.split(",")):
        if not go_name:
            continue
        openssl = GO_CIPHER_SUITES.get(go_name)
        if openssl is None:
            raise ValueError(f"unexpected TLS cipher suite {go_name!r}")
        if openssl != TLS13 and openssl not in names:
            names.append(openssl)
    return names


def restrict_ciphers(context: ssl.SSLContext, openssl_names: list[str]) -> None:
    """TLS 1.2 offers only ``openssl_names``; TLS 1.3 suites are left as they are. An
    empty list (only TLS 1.3 names given) leaves no TLS 1.2 suite: TLS 1.3 only.
    ssl.SSLError if OpenSSL has none of them."""
    if openssl_names:
        context.set_ciphers(":".join(openssl_names))
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_3


def self_cert(directory: Path, hosts: list[str]) -> tuple[Path, Path]:
    """etcd's ``transport.SelfCert``: ``cert.pem`` and ``key.pem`` in ``directory``,
    reused if both exist, else a self-signed ECDSA P-521 certificate valid a year with
    ``hosts`` (IPs or names) as SANs, for server authentication."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP521R1())
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(127) + 1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA512())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    log.info("created auto TLS certificate", extra={"cert": str(cert_path), "key": str(key_path)})
    return cert_path, key_path


def load_crl(path: str) -> x509.CertificateRevocationList:
    """A CRL in PEM or DER (as Go's ``x509.ParseCRL``); OSError or ValueError."""
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def hostname_matches(cert: x509.Certificate, hostname: str) -> bool:
    """Go's ``Certificate.VerifyHostname``: an IP against the IP SANs, a name against the
    DNS SANs (case-insensitive, ``*.`` covering one leftmost label); no CN fallback."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    host = hostname.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in sans.get_values_for_type(x509.IPAddress)
    host = host.rstrip(".").lower()
    for pattern in (p.rstrip(".").lower() for p in sans.get_values_for_type(x509.DNSName)):
        if pattern == host:
            return True
        if pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]:
            return True
    return False


@dataclass
class CertPolicy:
    """What a verified certificate presented to us must satisfy beyond the CA."""

    side: str
    """``client`` or ``peer``: named in the log line of a refusal."""
    crl_file: str = ""
    allowed_cn: str = ""
    allowed_hostname: str = ""
    _crl: tuple[tuple[int, int, int], frozenset[int]] | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return bool(self.crl_file or self.allowed_cn or self.allowed_hostname)

    def revoked_serials(self) -> frozenset[int]:
        """Serials in the CRL file, read again when it changes (etcd reads it on every
        connection: a new CRL holds for new connections without a restart)."""
        st = os.stat(self.crl_file)
        version = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._crl is None or self._crl[0] != version:
            crl = load_crl(self.crl_file)
            self._crl = (version, frozenset(r.serial_number for r in crl))
        return self._crl[1]

    def refusal(self, der: bytes | None, *, authenticated: bool) -> str | None:
        """Why the certificate ``der`` (None: none presented) is refused, or None.
        ``authenticated``: our side verified it against a CA (etcd applies the allowed
        CN/hostname only then, and the CRL to any presented)."""
        cert = x509.load_der_x509_certificate(der) if der else None
        if self.crl_file and cert is not None:
            try:
                if cert.serial_number in self.revoked_serials():
                    return f"certificate serial {cert.serial_number:x} revoked"
            except (OSError, ValueError) as exc:
                return f"cannot read CRL {self.crl_file}: {exc}"
        if authenticated and (self.allowed_cn or self.allowed_hostname):
            if cert is None:
                return "client certificate authentication failed (no certificate)"
            if self.allowed_cn:
                cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                if not cns or cns[0].value != self.allowed_cn:
                    return f"certificate CN is not {self.allowed_cn!r}"
            if self.allowed_hostname and not hostname_matches(cert, self.allowed_hostname):
                return f"certificate is not valid for {self.allowed_hostname!r}"
        return None


class PolicyContext(ssl.SSLContext):
    """An SSLContext carrying the :class:`CertPolicy` of its listener (or dialer)."""

    policy: CertPolicy | None = None
    check_client_san: bool = False
    """A peer listener's: check a client certificate's SANs against the address it
    connects from (:mod:`keel_store.server.san_check`), as etcd does unless
    ``--experimental-peer-skip-client-san-verification``."""


def refused(transport: Any) -> bool:
    """Check the certificate the other end of a TLS ``transport`` presented against its
    context's policy; if it fails, log why, abort the connection and return True."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return False
    context = ssl_object.context
    policy = getattr(context, "policy", None)
    if not policy:
        return False
    authenticated = context.verify_mode != ssl.CERT_NONE
    reason = policy.refusal(ssl_object.getpeercert(binary_form=True), authenticated=authenticated)
    if reason is None:
        return False
    reject(transport, policy.side, reason)
    return True


def reject(transport: Any, side: str, reason: str) -> None:
    """Log that a connection of ``side`` (client or peer) is refused for ``reason``
    (etcd's "rejected connection", at most a line per :data:`LOG_EVERY` for the same
    reason, with a count) and abort it."""
    now = time.monotonic()
    last, count = _logged.get((side, reason), (-LOG_EVERY, 0))
    if now - last >= LOG_EVERY:  # a refused peer redials every few ms: not a line each time
        log.warning(
            "rejected connection: %s",
            reason,
            extra={
                "side": side,
                "remote": str(transport.get_extra_info("peername")),
                "rejected_since_last_line": count,
            },
        )
        _logged[(side, reason)] = (now, 0)
    else:
        _logged[(side, reason)] = (last, count + 1)
    transport.abort()


LOG_EVERY = 5.0
"""Seconds between two log lines for the same refusal."""
_logged: dict[tuple[str, str], tuple[float, int]] = {}
