"""The client and peer TLS flags (etcd 3.4's): certificate files or auto TLS, CRLs,
allowed CN/hostname, cipher suites, the peer client SAN check, turned into SSL contexts
(:mod:`keel_store.server.tls` and :mod:`keel_store.server.san_check` do the checks after
each handshake)."""

from __future__ import annotations

import argparse
import logging
import ssl

from keel_store.flags import FlagError, check_files, data_dir_of, url_list
from keel_store.server import tls
from keel_store.server.transport import host_port

log = logging.getLogger("keel_store")


def _ciphers(args: argparse.Namespace) -> list[str] | None:
    """OpenSSL names for ``--cipher-suites`` (None: not given)."""
    if not args.cipher_suites:
        return None
    try:
        return tls.openssl_ciphers(args.cipher_suites)
    except ValueError as exc:
        raise FlagError(f"--cipher-suites={args.cipher_suites}: {exc}") from None


def _restrict(contexts: list[ssl.SSLContext], ciphers: list[str] | None, flags: str) -> None:
    if ciphers is None:
        return
    for context in contexts:
        try:
            tls.restrict_ciphers(context, ciphers)
        except ssl.SSLError:
            raise FlagError(
                f"--cipher-suites={flags}: none of these suites is available in this"
                " OpenSSL (or for this key)"
            ) from None


def _policy(
    side: str, args: argparse.Namespace, crl_flag: str, cn: str, hostname: str
) -> tls.CertPolicy:
    crl_file = getattr(args, crl_flag.replace("-", "_"))
    if crl_file:
        try:
            tls.load_crl(crl_file)
        except OSError as exc:
            raise FlagError(f"--{crl_flag}: {crl_file}: {exc.strerror}") from None
        except ValueError as exc:
            raise FlagError(f"--{crl_flag}: {crl_file}: not a PEM or DER CRL ({exc})") from None
    if cn and hostname:
        raise FlagError(
            f"--{side}-cert-allowed-cn={cn} and --{side}-cert-allowed-hostname={hostname}:"
            " give one, not both (etcd: mutually exclusive)"
        )
    return tls.CertPolicy(side, crl_file, cn, hostname)


def _load_chain(context: ssl.SSLContext, cert: str, key: str, flags: tuple[str, str]) -> None:
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise FlagError(
            f"--{flags[0]}={cert}, --{flags[1]}={key}: not a PEM certificate and its key"
            f" ({exc.reason or exc})"
        ) from None


def _auto_cert(args: argparse.Namespace, side: str, urls: str) -> tuple[str, str]:
    """etcd's auto TLS: a self-signed certificate for the hosts of the listen URLs."""
    hosts = [host_port(url)[0] for url in url_list(urls)]
    try:
        cert, key = tls.self_cert(data_dir_of(args) / "fixtures" / side, hosts)
    except OSError as exc:
        raise FlagError(f"--{'auto-tls' if side == 'client' else 'peer-auto-tls'}: {exc}") from None
    return str(cert), str(key)


def _warn_ignored(args: argparse.Namespace, auto_flag: str, flags: tuple[str, ...]) -> None:
    given = [f"--{f}" for f in flags if getattr(args, f.replace("-", "_"))]
    if given:
        log.warning(
            "%s: ignoring %s (as etcd: a generated certificate checks no one)",
            auto_flag,
            ", ".join(given),
        )


def _warn_unasked(args: argparse.Namespace, auth_flag: str, flags: tuple[str, ...]) -> None:
    given = [f"--{f}" for f in flags if getattr(args, f.replace("-", "_"))]
    if given and not getattr(args, auth_flag.replace("-", "_")):
        log.warning(
            "%s: no effect without --%s (no certificate is asked for)", ", ".join(given), auth_flag
        )


def client_tls(args: argparse.Namespace) -> tls.PolicyContext | None:
    """The client port's SSL context from ``--cert-file`` ... ``--auto-tls`` (None: no
    TLS); FlagError for a bad flag or file, before anything is served."""
    ciphers = _ciphers(args)
    cert, key, auto = args.cert_file, args.key_file, False
    if args.auto_tls:
        if cert or key:
            log.warning("--auto-tls: ignored since --cert-file/--key-file are given")
        else:
            cert, key = _auto_cert(args, "client", args.listen_client_urls)
            auto = True
            _warn_ignored(
                args,
                "--auto-tls",
                (
                    "trusted-ca-file",
                    "client-cert-auth",
                    "client-crl-file",
                    "client-cert-allowed-hostname",
                ),
            )
    if not (cert or key):
        for url in url_list(args.listen_client_urls):
            if url.startswith("https://"):
                raise FlagError(
                    f"--listen-client-urls: {url} needs --cert-file/--key-file or --auto-tls"
                )
        return None
    if not (cert and key):
        raise FlagError("--cert-file and --key-file: give both for client TLS")
    if auto:
        policy = tls.CertPolicy("client")
        ca, cert_auth = "", False
    else:
        check_files(args, "cert_file", "key_file", "trusted_ca_file", "client_crl_file")
        policy = _policy("client", args, "client-crl-file", "", args.client_cert_allowed_hostname)
        ca, cert_auth = args.trusted_ca_file, bool(args.client_cert_auth)
        _warn_unasked(args, "client-cert-auth", ("client-crl-file", "client-cert-allowed-hostname"))
    context = tls.PolicyContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key, ("cert-file", "key-file"))
    if ca:
        context.load_verify_locations(ca)
    if cert_auth:
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2", "http/1.1"])
    context.policy = policy
    _restrict([context], ciphers, args.cipher_suites)
    return context


def peer_tls(
    args: argparse.Namespace,
) -> tuple[tls.PolicyContext | None, tls.PolicyContext | None]:
    """(server, client) SSL contexts for the peer transport from the ``--peer-*`` flags."""
    ciphers = _ciphers(args)
    cert, key, ca = args.peer_cert_file, args.peer_key_file, args.peer_trusted_ca_file
    auto = False
    if args.peer_auto_tls:
        if cert or key:
            log.warning("--peer-auto-tls: ignored since --peer-cert-file/--peer-key-file are given")
        else:
            cert, key = _auto_cert(args, "peer", args.listen_peer_urls)
            auto, ca = True, ""
            _warn_ignored(
                args,
                "--peer-auto-tls",
                (
                    "peer-trusted-ca-file",
                    "peer-client-cert-auth",
                    "peer-crl-file",
                    "peer-cert-allowed-cn",
                    "peer-cert-allowed-hostname",
                ),
            )
    if not (cert or key or ca):
        return None, None
    if not (cert and key):
        raise FlagError("--peer-cert-file and --peer-key-file: give both for peer TLS")
    if not auto:
        check_files(args, "peer_cert_file", "peer_key_file", "peer_trusted_ca_file")
        check_files(args, "peer_crl_file")
    server = tls.PolicyContext(ssl.PROTOCOL_TLS_SERVER)
    client = tls.PolicyContext(ssl.PROTOCOL_TLS_CLIENT)
    # etcd checks the SANs of a certificate presented to its peer listener against the
    # address it comes from (not those of the peers it dials, nor on the client port).
    server.check_client_san = not args.experimental_peer_skip_client_san_verification
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, cert, key, ("peer-cert-file", "peer-key-file"))
    if auto:
        # etcd: peers' certificates are not verified (InsecureSkipVerify), nor asked for.
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
    else:
        cn, hostname = args.peer_cert_allowed_cn, args.peer_cert_allowed_hostname
        server.policy = _policy("peer", args, "peer-crl-file", cn, hostname)
        client.policy = tls.CertPolicy("peer", "", cn, hostname)  # etcd: CRL on accept only
        if ca:
            server.load_verify_locations(ca)
            client.load_verify_locations(ca)
        else:
            client.load_default_certs()
        if args.peer_client_cert_auth:
            server.verify_mode = ssl.CERT_REQUIRED
        _warn_unasked(args, "peer-client-cert-auth", ("peer-crl-file",))
    _restrict([server, client], ciphers, args.cipher_suites)
    return server, client
