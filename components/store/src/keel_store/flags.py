"""etcd 3.4's command line for ``keel-store``: the flag table, ``ETCD_*`` variables,
``--config-file``, Go durations, and the small checks the settings are built with.

Someone who runs etcd can swap the binary name: every flag of etcd 3.4 is taken (the
ones that tune what keel-store does not have are in :mod:`keel_store.compat_flags`).
As with etcd, every flag can also come from the environment (``--initial-cluster-token``
from ``ETCD_INITIAL_CLUSTER_TOKEN``); a flag on the command line wins; with
``--config-file`` the file's settings are used instead of both. Flags may be spelt with
one dash or two.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from keel_store import compat_flags, config_file
from keel_store.mvcc import validate
from keel_store.server import h2conn
from keel_store.server.transport import host_port

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
        "discovery-srv",
        "",
        "DNS domain whose SRV records (_etcd-server-ssl._tcp, _etcd-server._tcp) list the"
        " members to bootstrap a new cluster with, instead of --initial-cluster",
    ),
    (
        "discovery-srv-name",
        "",
        "suffix of the SRV services asked with --discovery-srv (_etcd-server-NAME._tcp)",
    ),
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
    (
        "experimental-snapshot-bytes",
        32 << 20,
        "keel-store's own: also snapshot once the entries applied since the last snapshot"
        " reach this many bytes, or the key space's size if larger, which bounds a"
        " restart's replay (0: by --snapshot-count only, as etcd)",
    ),
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
        "do not check that a peer's client certificate has an IP SAN (or a DNS SAN resolving"
        " to or from the IP) matching the address it connects from",
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


def first_url(urls: str, flag: str) -> str:
    first = urls.split(",", maxsplit=1)[0].strip()
    try:
        host_port(first)
    except ValueError as exc:
        raise FlagError(f"--{flag}: {exc}") from None
    return first


def data_dir_of(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or f"{args.name}.etcd")


def url_list(text: str) -> list[str]:
    return [u.strip() for u in text.split(",") if u.strip()]


def check_files(args: argparse.Namespace, *flags: str) -> None:
    for flag in flags:
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise FlagError(f"--{flag.replace('_', '-')}: {path}: no such file")
