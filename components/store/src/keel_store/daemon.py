"""``keel-store``: the store daemon, taking etcd's flags and ``ETCD_*`` variables.

Someone who runs etcd can swap the binary name: ``--name``, ``--data-dir``, the
client and peer URL flags, ``--initial-cluster*``, the Raft timing flags,
``--snapshot-count``, ``--quota-backend-bytes``, ``--auto-compaction-*`` and the client
and peer TLS flags (auto TLS, CRLs, allowed CN/hostname, cipher suites) mean what they
mean for etcd 3.4. As with etcd, every flag can also come
from the environment (``--initial-cluster-token`` from ``ETCD_INITIAL_CLUSTER_TOKEN``);
a flag on the command line wins. Flags may be spelt with one dash or two.

``keel-store snapshot status|restore ...`` are etcdctl's snapshot commands for keel-store
(:mod:`keel_store.snapshot_cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from keel_core import systemd
from keel_store import compat_flags, config_file, eventloop, snapshot_cli, v2discovery
from keel_store.mvcc import validate
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcgrpc, rpcpb
from keel_store.server import (
    auth_service,
    corruption,
    gateway,
    h2conn,
    kv_service,
    other_services,
    tls,
    tokens,
)
from keel_store.server.gc_policy import GcPolicy
from keel_store.server.grpc_metrics import GrpcStats, instrument
from keel_store.server.grpc_server import GrpcServer
from keel_store.server.members import Cluster, ClusterConfigError, parse_initial_cluster
from keel_store.server.node import NodeConfig, StoreNode
from keel_store.server.transport import host_port

log = logging.getLogger("keel_store")

FLAGS: list[tuple[str, Any, str]] = [
    (
        "config-file",
        "",
        "YAML file of etcd's settings (keys named like the flags); other flags and"
        " ETCD_* variables are then ignored",
    ),
    ("name", "default", "human-readable name for this member"),
    ("data-dir", "", "path to the data directory (default: ${name}.etcd)"),
    ("wal-dir", "", "path to a dedicated WAL directory (default: <data-dir>/member/wal)"),
    (
        "max-snapshots",
        2,
        "snapshot files to keep, at least 1 (etcd: 5, 0 for unlimited); the WAL is kept"
        " back to the oldest",
    ),
    (
        "max-wals",
        5,
        "WAL files to keep once no snapshot needs them (0: unlimited; a needed one stays)",
    ),
    ("listen-client-urls", "http://localhost:2379", "URLs to listen on for client traffic"),
    ("advertise-client-urls", "http://localhost:2379", "client URLs told to the cluster"),
    ("listen-peer-urls", "http://localhost:2380", "URLs to listen on for peer traffic"),
    ("listen-metrics-urls", "", "URLs for /metrics, /health, /version and the JSON gateway"),
    ("initial-advertise-peer-urls", "http://localhost:2380", "peer URLs told to the cluster"),
    ("initial-cluster", "", "initial cluster: name=peer-url,... (default: ${name}=peer-url)"),
    ("initial-cluster-state", "new", "new or existing"),
    ("initial-cluster-token", "etcd-cluster", "cluster token; peers with another are refused"),
    (
        "discovery",
        "",
        "discovery URL (an etcd v2 key space such as discovery.etcd.io) to bootstrap a new"
        " cluster with, instead of --initial-cluster",
    ),
    ("discovery-proxy", "", "HTTP proxy for the requests to the discovery service"),
    (
        "discovery-fallback",
        "proxy",
        "exit or proxy: what etcd does when the discovered cluster is full (keel-store"
        " has no proxy mode: it exits either way)",
    ),
    ("heartbeat-interval", 100, "time (ms) of a heartbeat interval"),
    ("election-timeout", 1000, "time (ms) for an election to timeout"),
    (
        "pre-vote",
        True,
        "campaign only after a pre-vote (etcd 3.4's default: false; keel-store's fast"
        " failover needs it)",
    ),
    (
        "initial-election-tick-advance",
        True,
        "on a start, once peers for a quorum are connected, fast-forward the election"
        " clock (election ticks - 2) instead of waiting a whole election timeout"
        " (a one-member cluster always does)",
    ),
    (
        "strict-reconfig-check",
        True,
        "refuse membership changes that could cost the cluster its quorum (not enough"
        " started members, or this member not connected to every voting member for 5 s)",
    ),
    (
        "force-new-cluster",
        False,
        "on a restart, commit the local log and drop every other member: a one-member"
        " cluster with this member's data (disaster recovery; ignored for a new member)",
    ),
    ("snapshot-count", 100_000, "committed transactions between snapshots"),
    ("quota-backend-bytes", 0, "raise an alarm when the backend exceeds this (0: 2 GiB)"),
    ("auto-compaction-mode", "periodic", "periodic or revision"),
    ("auto-compaction-retention", "0", "hours (periodic, or a Go duration) / revisions kept"),
    (
        "experimental-watch-progress-notify-interval",
        "10m",
        "how often watches created with progress_notify hear the current revision",
    ),
    (
        "experimental-enable-lease-checkpoint",
        False,
        "the leader records long leases' remaining TTL in the log, so a new leader does"
        " not give them their full TTL again",
    ),
    (
        "experimental-lease-checkpoint-interval",
        "5m",
        "keel-store's own: how often a lease is checkpointed (etcd: always 5m)",
    ),
    (
        "experimental-initial-corrupt-check",
        False,
        "before serving, compare this member's key space hash with its peers' and refuse"
        " to start on a difference",
    ),
    (
        "experimental-corrupt-check-time",
        "0s",
        "how often the leader compares key space hashes (0s: never); a difference raises"
        " the CORRUPT alarm",
    ),
    ("max-txn-ops", validate.DEFAULT_MAX_TXN_OPS, "maximum operations in one txn"),
    (
        "max-request-bytes",
        validate.DEFAULT_MAX_REQUEST_BYTES,
        "maximum client request size in bytes (and of a fragmented watch response)",
    ),
    (
        "max-concurrent-streams",
        h2conn.UNLIMITED_STREAMS,
        "maximum concurrent gRPC streams each client connection may open (0: no limit)",
    ),
    (
        "grpc-keepalive-min-time",
        "5s",
        "minimum time a client should wait between keepalive pings (0: grpc-go's 5m)",
    ),
    (
        "grpc-keepalive-interval",
        "2h",
        "ping a connection idle this long (0: grpc-go's default, 2h)",
    ),
    (
        "grpc-keepalive-timeout",
        "20s",
        "close a connection whose ping is not answered within this (0: grpc-go's 20s)",
    ),
    (
        "cors",
        "*",
        "comma-separated origins allowed for CORS on the client HTTP endpoints (* or empty: all)",
    ),
    (
        "host-whitelist",
        "*",
        "comma-separated Host names accepted by the plain-HTTP client endpoints (* or empty: all)",
    ),
    ("cert-file", "", "client server TLS certificate"),
    ("key-file", "", "client server TLS key"),
    ("trusted-ca-file", "", "client server TLS trusted CA certificate"),
    ("client-cert-auth", False, "require client certificates signed by the trusted CA"),
    (
        "client-crl-file",
        "",
        "PEM or DER CRL: client certificates it revokes are refused (read again when it changes)",
    ),
    (
        "client-cert-allowed-hostname",
        "",
        "with --client-cert-auth, client certificates must be valid for this name or IP (SAN)",
    ),
    (
        "auto-tls",
        False,
        "client TLS with a generated self-signed certificate (<data-dir>/fixtures/client) if"
        " --cert-file/--key-file are not given; client certificates are then not checked",
    ),
    ("peer-cert-file", "", "peer TLS certificate (used to serve and to dial peers)"),
    ("peer-key-file", "", "peer TLS key"),
    ("peer-trusted-ca-file", "", "peer TLS trusted CA: peers' certificates must chain to it"),
    ("peer-client-cert-auth", False, "require peers to present certificates from the CA"),
    (
        "peer-crl-file",
        "",
        "PEM or DER CRL: peer certificates it revokes are refused (read again when it changes)",
    ),
    (
        "peer-cert-allowed-cn",
        "",
        "peer certificates (of peers dialing in, with --peer-client-cert-auth, and of peers"
        " dialed) must have this CN",
    ),
    (
        "peer-cert-allowed-hostname",
        "",
        "peer certificates (as for --peer-cert-allowed-cn) must be valid for this name or IP",
    ),
    (
        "peer-auto-tls",
        False,
        "peer TLS with a generated self-signed certificate (<data-dir>/fixtures/peer) if"
        " --peer-cert-file/--peer-key-file are not given; peers' certificates are not checked",
    ),
    (
        "cipher-suites",
        "",
        "comma-separated Go names of the TLS 1.2 cipher suites offered, client and peer"
        " (e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256); TLS 1.3 suites are not restricted",
    ),
    (
        "experimental-peer-skip-client-san-verification",
        False,
        "accepted for compatibility: keel-store never checks a peer's client certificate SAN"
        " against the peer's address (etcd does unless this is set)",
    ),
    ("auth-token", "simple", "simple, or jwt,pub-key=PEM,priv-key=PEM,sign-method=RS256,ttl=5m"),
    ("auth-token-ttl", 300, "seconds a simple auth token lives after its last use"),
    ("bcrypt-cost", 10, "bcrypt work factor of password hashes (4 to 31)"),
    ("metrics", "basic", "basic, or extensive to add gRPC handling-time histograms"),
    (
        "experimental-warning-apply-duration",
        "100ms",
        "log a warning when applying one entry takes longer than this",
    ),
    ("log-level", "warn", "debug, info, warn or error"),
    ("debug", False, "debug-level logging (etcd 3.4: deprecated for --log-level=debug)"),
    ("logger", "zap", "accepted for compatibility; logs are JSON lines"),
    (
        "log-outputs",
        "default",
        "where logs go, comma separated: stderr, stdout or file paths (default: stderr)",
    ),
    ("enable-v2", False, "accepted for compatibility; the v2 API is not served"),
    ("enable-grpc-gateway", True, "serve the JSON gateway (/v3/...) on the client URLs"),
    ("unsafe-no-fsync", False, "do not fsync the log (tests only: loses data on crash)"),
]


class FlagError(ValueError):
    """A flag or ETCD_* variable has a bad value; the message names it."""


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on", ""):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


DURATION_FLAGS = frozenset(
    {
        "backend-batch-interval",
        "experimental-corrupt-check-time",
        "experimental-lease-checkpoint-interval",
        "experimental-watch-progress-notify-interval",
        "experimental-warning-apply-duration",
        "grpc-keepalive-interval",
        "grpc-keepalive-min-time",
        "grpc-keepalive-timeout",
    }
)
"""Flags whose values are Go durations (a number of nanoseconds in a config file)."""


def parse_args(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    """etcd-style flags, with ``ETCD_*`` environment variables as defaults; with
    ``--config-file`` (or ``ETCD_CONFIG_FILE``) the file's settings instead, as etcd
    then ignores the other flags and the environment (``args.config_notes`` says what
    was ignored)."""
    args = _parse_flags(argv, dict(os.environ if environ is None else environ))
    path = args.config_file or (os.environ if environ is None else environ).get(
        "ETCD_CONFIG_FILE", ""
    )
    if not path:
        args.config_notes = []
        return args
    defaults = _parse_flags([], {})
    flags = {name: default for name, default, _ in [*FLAGS, *compat_flags.COMPAT_FLAGS]}
    try:
        values, notes = config_file.load(path, flags, DURATION_FLAGS)
    except config_file.ConfigFileError as exc:
        raise FlagError(str(exc)) from None
    for name, value in values.items():
        setattr(defaults, name.replace("-", "_"), value)
    defaults.config_file = path
    defaults.version = args.version
    given = sorted(
        {a.split("=", 1)[0] for a in argv if a.startswith("-")} - {"--config-file", "-config-file"}
    )
    if given:
        notes.append(f"{path} is used: {', '.join(given)} on the command line ignored")
    defaults.config_notes = notes
    return defaults


def _parse_flags(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="keel-store",
        allow_abbrev=False,
        description="Keel's store: an etcd v3 compatible, Raft-replicated key-value store.",
    )
    parser.add_argument("--version", "-version", action="store_true", help="print version")
    for name, default, help_text in [*FLAGS, *compat_flags.COMPAT_FLAGS]:
        env = "ETCD_" + name.upper().replace("-", "_")
        value: Any = default
        if env in environ:
            raw = environ[env]
            try:
                if isinstance(default, bool):
                    value = _parse_bool(raw)
                elif isinstance(default, int):
                    value = int(raw)
                else:
                    value = raw
            except ValueError:
                raise FlagError(f"{env}={raw!r}: not a valid value for --{name}") from None
        dest = name.replace("-", "_")
        if isinstance(default, bool):
            parser.add_argument(
                f"--{name}",
                f"-{name}",
                dest=dest,
                nargs="?",
                const=True,
                default=value,
                type=_parse_bool,
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{name}",
                f"-{name}",
                dest=dest,
                default=value,
                type=type(default),
                help=f"{help_text} (default {default!r})",
            )
    return parser.parse_args(argv)


def _first(urls: str, flag: str) -> str:
    first = urls.split(",", maxsplit=1)[0].strip()
    try:
        host_port(first)
    except ValueError as exc:
        raise FlagError(f"--{flag}: {exc}") from None
    return first


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or f"{args.name}.etcd")


def _urls(text: str) -> list[str]:
    return [u.strip() for u in text.split(",") if u.strip()]


def _check_files(args: argparse.Namespace, *flags: str) -> None:
    for flag in flags:
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise FlagError(f"--{flag.replace('_', '-')}: {path}: no such file")


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
    hosts = [host_port(url)[0] for url in _urls(urls)]
    try:
        cert, key = tls.self_cert(_data_dir(args) / "fixtures" / side, hosts)
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
        for url in _urls(args.listen_client_urls):
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
        _check_files(args, "cert_file", "key_file", "trusted_ca_file", "client_crl_file")
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
        _check_files(args, "peer_cert_file", "peer_key_file", "peer_trusted_ca_file")
        _check_files(args, "peer_crl_file")
    server = tls.PolicyContext(ssl.PROTOCOL_TLS_SERVER)
    client = tls.PolicyContext(ssl.PROTOCOL_TLS_CLIENT)
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


def node_config(args: argparse.Namespace) -> NodeConfig:
    """Validate flags and turn them into a :class:`NodeConfig`."""
    if args.initial_cluster_state not in ("new", "existing"):
        raise FlagError(
            f"--initial-cluster-state: {args.initial_cluster_state!r} is not 'new' or 'existing'"
        )
    if args.heartbeat_interval <= 0 or args.election_timeout < 5 * args.heartbeat_interval:
        raise FlagError("--election-timeout: must be at least 5 times --heartbeat-interval")
    server_ssl, client_ssl = peer_tls(args)
    try:
        token_provider = tokens.parse(args.auth_token, float(args.auth_token_ttl))
    except tokens.TokenSpecError as exc:
        raise FlagError(str(exc)) from None
    if args.discovery and args.initial_cluster:
        raise FlagError(
            "multiple discovery or bootstrap flags are set. Choose one of"
            ' "initial-cluster", "discovery" or "discovery-srv"'
        )
    if args.discovery_fallback not in ("exit", "proxy"):
        raise FlagError(
            f"--discovery-fallback: {args.discovery_fallback!r} is not 'exit' or 'proxy'"
        )
    peer_url = _first(args.initial_advertise_peer_urls, "initial-advertise-peer-urls")
    spec = args.initial_cluster or f"{args.name}={peer_url}"
    try:
        cluster = Cluster(parse_initial_cluster(spec), args.initial_cluster_token)
        me = cluster.by_name(args.name)
    except ClusterConfigError as exc:
        raise FlagError(str(exc)) from None
    me.client_urls = [u.strip() for u in args.advertise_client_urls.split(",") if u.strip()]
    try:
        ignored = compat_flags.check(args, go_duration)
    except compat_flags.UnsupportedFlag as exc:
        raise FlagError(str(exc)) from None
    for warning in [*getattr(args, "config_notes", ()), *ignored]:
        log.warning(warning)
    if args.max_wals < 0:
        raise FlagError(f"--max-wals={args.max_wals}: must be 0 (unlimited) or more")
    if args.auth_token_ttl <= 0:
        raise FlagError(f"--auth-token-ttl={args.auth_token_ttl}: must be a positive number")
    if not 4 <= args.bcrypt_cost <= 31:
        raise FlagError(f"--bcrypt-cost={args.bcrypt_cost}: must be from 4 to 31 (bcrypt)")
    if args.metrics not in ("basic", "extensive"):
        raise FlagError(f"--metrics: {args.metrics!r} is not 'basic' or 'extensive'")
    checkpoints = go_duration(
        args.experimental_lease_checkpoint_interval, "experimental-lease-checkpoint-interval"
    )
    if checkpoints <= 0:
        raise FlagError("--experimental-lease-checkpoint-interval: must be positive")
    progress = args.experimental_watch_progress_notify_interval
    if go_duration(progress, "experimental-watch-progress-notify-interval") <= 0:
        raise FlagError("--experimental-watch-progress-notify-interval: must be positive")
    if go_duration(args.experimental_corrupt_check_time, "experimental-corrupt-check-time") < 0:
        raise FlagError("--experimental-corrupt-check-time: must not be negative")
    warn_apply = go_duration(
        args.experimental_warning_apply_duration, "experimental-warning-apply-duration"
    )
    if args.max_snapshots < 1:
        raise FlagError(
            f"--max-snapshots={args.max_snapshots}: keel-store keeps at least one snapshot"
            " (the WAL is kept back to the oldest snapshot kept, so unlimited snapshots"
            " would keep every WAL entry)"
        )
    return NodeConfig(
        name=args.name,
        data_dir=_data_dir(args),
        wal_dir=Path(args.wal_dir) if args.wal_dir else None,
        max_snapshots=args.max_snapshots,
        max_wals=args.max_wals,
        pre_vote=args.pre_vote,
        strict_reconfig_check=args.strict_reconfig_check,
        force_new_cluster=args.force_new_cluster,
        initial_election_tick_advance=args.initial_election_tick_advance,
        cluster=cluster,
        heartbeat_ms=args.heartbeat_interval,
        election_ms=args.election_timeout,
        snapshot_count=args.snapshot_count,
        quota_bytes=args.quota_backend_bytes or (2 << 30),
        fsync=not args.unsafe_no_fsync,
        background_snapshots=True,
        join_existing=args.initial_cluster_state == "existing",
        peer_server_ssl=server_ssl,
        peer_client_ssl=client_ssl,
        listen_peer_url=_first(args.listen_peer_urls, "listen-peer-urls"),
        token_provider=token_provider,
        bcrypt_cost=args.bcrypt_cost,
        max_request_bytes=args.max_request_bytes,
        warn_apply_seconds=warn_apply,
        lease_checkpoint_interval=checkpoints if args.experimental_enable_lease_checkpoint else 0,
    )


def go_duration(text: str, flag: str) -> float:
    """Seconds in a Go duration like ``10m``, ``1.5s``, ``500ms``, ``1h30m``, ``-2s`` or
    ``0`` (what Go's ``time.ParseDuration`` takes)."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
    units |= {"m": 60.0, "h": 3600.0}
    body = text[1:] if text[:1] in ("-", "+") else text
    if body == "0":
        return 0.0
    total, number, pos = 0.0, "", 0
    while pos < len(body):
        ch = body[pos]
        if ch.isdigit() or ch == ".":
            number += ch
            pos += 1
            continue
        unit = next((u for u in units if len(u) == 2 and body.startswith(u, pos)), None)
        unit = unit or next((u for u in ("h", "m", "s") if body.startswith(u, pos)), None)
        if unit is None or not number or number == ".":
            raise FlagError(f"--{flag}: {text!r} is not a duration (like 10m, 1s, 500ms)")
        total += float(number) * units[unit]
        number, pos = "", pos + len(unit)
    if number or not body:
        raise FlagError(f"--{flag}: {text!r} is not a duration (like 10m, 1s, 500ms)")
    return -total if text.startswith("-") else total


GRPC_DEFAULT_MIN_TIME = 300.0
"""grpc-go's enforcement MinTime when etcd passes none (--grpc-keepalive-min-time=0)."""
GRPC_DEFAULT_INTERVAL, GRPC_DEFAULT_TIMEOUT = 7200.0, 20.0
"""grpc-go's keepalive when etcd passes none (either --grpc-keepalive-interval or
--grpc-keepalive-timeout 0: despite etcd's help text, that does not disable pings)."""


def connection_options(args: argparse.Namespace) -> h2conn.Options:
    """``--max-concurrent-streams`` and ``--grpc-keepalive-*`` as etcd hands them to grpc-go."""
    streams = args.max_concurrent_streams
    if not 0 <= streams <= h2conn.UNLIMITED_STREAMS:
        raise FlagError(
            f"--max-concurrent-streams={streams}: not between 0 and"
            f" {h2conn.UNLIMITED_STREAMS} (an unsigned 32-bit number; 0: no limit)"
        )
    min_time = go_duration(args.grpc_keepalive_min_time, "grpc-keepalive-min-time")
    interval = go_duration(args.grpc_keepalive_interval, "grpc-keepalive-interval")
    timeout = go_duration(args.grpc_keepalive_timeout, "grpc-keepalive-timeout")
    if interval <= 0 or timeout <= 0:
        interval, timeout = GRPC_DEFAULT_INTERVAL, GRPC_DEFAULT_TIMEOUT
    return h2conn.Options(
        max_streams=streams,
        ping_min_time=min_time if min_time > 0 else GRPC_DEFAULT_MIN_TIME,
        keepalive_interval=interval,
        keepalive_timeout=timeout,
    )


def access_policy(args: argparse.Namespace) -> gateway.AccessPolicy:
    """``--cors`` and ``--host-whitelist`` for the client URLs' HTTP endpoints."""
    origins = [o.strip() for o in args.cors.split(",") if o.strip()]
    for origin in origins:
        if origin != "*" and not gateway.is_origin(origin):
            raise FlagError(
                f"--cors: {origin!r} is not an origin (like https://example.com:8443, or *)"
            )
    hosts = [h.strip() for h in args.host_whitelist.split(",") if h.strip()]
    return gateway.AccessPolicy(
        cors=None if not origins or "*" in origins else frozenset(origins),
        hosts=None if not hosts or "*" in hosts else frozenset(hosts),
    )


def _retention_seconds(text: str, mode: str) -> float:
    if mode == "revision":
        return float(int(text))
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text) * 3600.0


async def auto_compact(node: StoreNode, mode: str, retention: float) -> None:
    """etcd's ``--auto-compaction-*``: compact old revisions from the leader."""
    samples: deque[tuple[float, int]] = deque()
    interval = 300.0 if mode == "revision" else max(1.0, retention / 10)
    while True:
        await asyncio.sleep(interval)
        if not node.is_leader:
            continue
        kv = node.sm.kv
        target = 0
        if mode == "revision":
            target = kv.revision - int(retention)
        else:
            now = time.monotonic()
            samples.append((now, kv.revision))
            while samples and now - samples[0][0] >= retention:
                target = samples.popleft()[1]
        if target > kv.compact_revision:
            with contextlib.suppress(Exception):
                await node.propose(Kind.COMPACT, rpcpb.CompactionRequest(revision=target))


def _server(
    node: StoreNode,
    kv: kv_service.KVService,
    args: argparse.Namespace,
    stats: GrpcStats,
    http1: gateway.Gateway,
    *,
    context: ssl.SSLContext | None,
    options: h2conn.Options,
) -> GrpcServer:
    limit = args.max_request_bytes + validate.GRPC_OVERHEAD_BYTES
    # The client port speaks gRPC (HTTP/2) and, on the same socket as etcd's cmux, the
    # JSON gateway, /health, /version and /metrics (HTTP/1.1).
    server = GrpcServer(
        max_receive_message_length=limit, http1=http1.serve_connection, options=options
    )
    counted = instrument(server, stats)  # grpc_server_*_total, client bytes
    rpcgrpc.add_KVServicer_to_server(kv, counted)
    interval = go_duration(
        args.experimental_watch_progress_notify_interval,
        "experimental-watch-progress-notify-interval",
    )
    watch = kv_service.WatchService(node, interval, limit)
    rpcgrpc.add_WatchServicer_to_server(watch, counted)
    rpcgrpc.add_LeaseServicer_to_server(other_services.LeaseService(node), counted)
    rpcgrpc.add_ClusterServicer_to_server(other_services.ClusterService(node), counted)
    rpcgrpc.add_MaintenanceServicer_to_server(other_services.MaintenanceService(node), counted)
    rpcgrpc.add_AuthServicer_to_server(auth_service.AuthService(node), counted)
    for url in filter(None, (u.strip() for u in args.listen_client_urls.split(","))):
        host, port = host_port(url)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if url.startswith("https://"):
            if context is None:
                raise FlagError(
                    f"--listen-client-urls: {url} needs --cert-file/--key-file or --auto-tls"
                )
            server.add_secure_port(address, context)
        else:
            server.add_insecure_port(address)
    return server


_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, like etcd's zap logger: level, time, logger, message,
    then the record's own fields (``extra=``: which file, which offset) and, for a
    logged exception, its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "level": record.levelname.lower(),
            "ts": round(record.created, 3),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


async def serve(args: argparse.Namespace) -> int:
    """Run the member until SIGINT/SIGTERM (exit status 0), or until its Raft
    processing fails, e.g. on a disk that cannot be written (status 1)."""
    config = node_config(args)
    if args.discovery and not _has_wal(config):
        try:
            args = await _discover(args, config)
        except v2discovery.DiscoveryError as exc:
            log.error("failed to join discovery cluster (%s)", exc)
            if str(exc) == v2discovery.ErrFullCluster and args.discovery_fallback == "proxy":
                log.error("etcd would run as a proxy now; keel-store has no proxy mode")
            return 1
        config = node_config(args)
    client_ssl = client_tls(args)  # flag errors before the member starts
    options = connection_options(args)
    access = access_policy(args)
    node = StoreNode(config)
    stop = asyncio.Event()
    node.on_failure = lambda _: stop.set()
    await node.start()
    if args.experimental_initial_corrupt_check:
        try:
            await corruption.initial_check(node)
        except corruption.CorruptionError as exc:
            log.error("the member stops: %s", exc)
            await node.stop()
            return 1
    # After recovery: the imported modules and the recovered state leave the collected
    # generations, so full collections do not stop the loop to scan the key space
    # (keel_store.server.gc_policy). Process-wide, hence here and not in StoreNode.
    gc_policy = GcPolicy()
    gc_policy.install()
    kv = kv_service.KVService(node, args.max_txn_ops)
    grpc_stats = GrpcStats(handling_time=args.metrics == "extensive")
    # --cors and --host-whitelist guard the client URLs' HTTP side, as etcd's
    # accessController; etcd's --listen-metrics-urls handler has neither.
    client_gateway = gateway.Gateway(node, kv, grpc_stats, access, args.enable_grpc_gateway)
    server = _server(
        node, kv, args, grpc_stats, client_gateway, context=client_ssl, options=options
    )
    gateways: list[gateway.Gateway] = []
    # A proposal with no other request in progress is handled at once (StoreNode.alone).
    node.alone = lambda: (
        server.unary_calls + client_gateway.calls + sum(g.calls for g in gateways) <= 1
    )
    await server.start()
    for url in filter(None, (u.strip() for u in args.listen_metrics_urls.split(","))):
        gw = gateway.Gateway(node, kv, grpc_stats, json_api=args.enable_grpc_gateway)
        await gw.listen(*host_port(url))
        gateways.append(gw)
    log.info("serving clients on %s as member %x", args.listen_client_urls, node.member_id)
    systemd.notify()  # Type=notify: the unit is active once clients can connect
    tasks = []
    retention = _retention_seconds(args.auto_compaction_retention, args.auto_compaction_mode)
    if retention > 0:
        tasks.append(asyncio.create_task(auto_compact(node, args.auto_compaction_mode, retention)))
    check_every = go_duration(
        args.experimental_corrupt_check_time, "experimental-corrupt-check-time"
    )
    if check_every > 0:
        tasks.append(asyncio.create_task(corruption.monitor(node, check_every)))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for task in tasks:
        task.cancel()
    for gw in [*gateways, client_gateway]:
        await gw.close()
    await server.stop(grace=0.5)
    await node.stop()
    gc_policy.uninstall()
    return 1 if node.failure is not None else 0


def _has_wal(config: NodeConfig) -> bool:
    """Whether the member has a log already (then discovery is not used, as in etcd)."""
    wal = config.wal_dir or config.data_dir / "member" / "wal"
    return wal.is_dir() and any(p.suffix == ".wal" for p in wal.iterdir())


async def _discover(args: argparse.Namespace, config: NodeConfig) -> argparse.Namespace:
    """--discovery: the initial cluster from the discovery service (in a thread: it
    waits until every member registered)."""
    me = config.cluster.by_name(args.name)
    registration = ",".join(f"{args.name}={url}" for url in me.peer_urls)
    log.info("joining discovery cluster", extra={"url": args.discovery, "member": f"{me.id:x}"})
    spec = await asyncio.to_thread(
        v2discovery.join_cluster, args.discovery, me.id, registration, args.discovery_proxy
    )
    log.info("discovered the initial cluster", extra={"initial-cluster": spec})
    return argparse.Namespace(**{**vars(args), "initial_cluster": spec, "discovery": ""})


def log_handlers(outputs: str) -> list[logging.Handler]:
    """``--log-outputs`` as etcd takes it: ``default`` or ``stderr``, ``stdout``, or
    file paths (appended to), comma separated."""
    handlers: list[logging.Handler] = []
    for output in (o.strip() for o in outputs.split(",")):
        if output in ("default", "stderr"):
            handlers.append(logging.StreamHandler(sys.stderr))
        elif output == "stdout":
            handlers.append(logging.StreamHandler(sys.stdout))
        elif output:
            try:
                handlers.append(logging.FileHandler(output))
            except OSError as exc:
                raise FlagError(f"--log-outputs: {output}: {exc.strerror}") from None
    if not handlers:
        raise FlagError(f"--log-outputs: {outputs!r} names no output")
    return handlers


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["snapshot"]:
        return snapshot_cli.main(argv[1:])
    try:
        args = parse_args(argv)
        if args.version:
            print(f"keel-store (etcd API {other_services.ETCD_VERSION})")
            return 0
        outputs = args.log_outputs
        if outputs == "default" and args.log_output:  # etcd 3.4's deprecated spelling
            outputs = args.log_output
        handlers = log_handlers(outputs)
        for handler in handlers:
            handler.setFormatter(JsonFormatter())
        level = args.log_level.upper().replace("WARN", "WARNING")
        if args.log_level.lower() == "warning":
            level = "WARNING"
        logging.basicConfig(level="DEBUG" if args.debug else level, handlers=handlers)
        with asyncio.Runner(loop_factory=eventloop.loop_factory()) as runner:
            return runner.run(serve(args))
    except (FlagError, eventloop.EventLoopChoiceError) as exc:
        print(f"keel-store: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"keel-store: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
