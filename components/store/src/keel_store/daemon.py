"""``keel-store``: the store daemon, taking etcd's flags and ``ETCD_*`` variables.

Someone who runs etcd can swap the binary name: ``--name``, ``--data-dir``, the
client and peer URL flags, ``--initial-cluster*``, the Raft timing flags,
``--snapshot-count``, ``--quota-backend-bytes``, ``--auto-compaction-*`` and the client
TLS flags mean what they mean for etcd 3.4. As with etcd, every flag can also come
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
from keel_store import eventloop, snapshot_cli
from keel_store.mvcc import validate
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcgrpc, rpcpb
from keel_store.server import auth_service, gateway, kv_service, other_services, tokens
from keel_store.server.gc_policy import GcPolicy
from keel_store.server.grpc_metrics import GrpcStats, instrument
from keel_store.server.grpc_server import GrpcServer, server_ssl_context
from keel_store.server.members import Cluster, ClusterConfigError, parse_initial_cluster
from keel_store.server.node import NodeConfig, StoreNode
from keel_store.server.transport import host_port

log = logging.getLogger("keel_store")

FLAGS: list[tuple[str, Any, str]] = [
    ("name", "default", "human-readable name for this member"),
    ("data-dir", "", "path to the data directory (default: ${name}.etcd)"),
    ("wal-dir", "", "path to a dedicated WAL directory (default: <data-dir>/member/wal)"),
    (
        "max-snapshots",
        2,
        "snapshot files to keep, at least 1 (etcd: 5, 0 for unlimited); the WAL is kept"
        " back to the oldest",
    ),
    ("listen-client-urls", "http://localhost:2379", "URLs to listen on for client traffic"),
    ("advertise-client-urls", "http://localhost:2379", "client URLs told to the cluster"),
    ("listen-peer-urls", "http://localhost:2380", "URLs to listen on for peer traffic"),
    ("listen-metrics-urls", "", "URLs for /metrics, /health, /version and the JSON gateway"),
    ("initial-advertise-peer-urls", "http://localhost:2380", "peer URLs told to the cluster"),
    ("initial-cluster", "", "initial cluster: name=peer-url,... (default: ${name}=peer-url)"),
    ("initial-cluster-state", "new", "new or existing"),
    ("initial-cluster-token", "etcd-cluster", "cluster token; peers with another are refused"),
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
    ("max-txn-ops", validate.DEFAULT_MAX_TXN_OPS, "maximum operations in one txn"),
    (
        "max-request-bytes",
        validate.DEFAULT_MAX_REQUEST_BYTES,
        "maximum client request size in bytes (and of a fragmented watch response)",
    ),
    ("cert-file", "", "client server TLS certificate"),
    ("key-file", "", "client server TLS key"),
    ("trusted-ca-file", "", "client server TLS trusted CA certificate"),
    ("client-cert-auth", False, "require client certificates signed by the trusted CA"),
    ("peer-cert-file", "", "peer TLS certificate (used to serve and to dial peers)"),
    ("peer-key-file", "", "peer TLS key"),
    ("peer-trusted-ca-file", "", "peer TLS trusted CA: peers' certificates must chain to it"),
    ("peer-client-cert-auth", False, "require peers to present certificates from the CA"),
    ("auth-token", "simple", "simple, or jwt,pub-key=PEM,priv-key=PEM,sign-method=RS256,ttl=5m"),
    ("log-level", "warn", "debug, info, warn or error"),
    ("logger", "zap", "accepted for compatibility; logs are JSON lines"),
    (
        "log-outputs",
        "default",
        "where logs go, comma separated: stderr, stdout or file paths (default: stderr)",
    ),
    ("enable-v2", False, "accepted for compatibility; the v2 API is not served"),
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


def parse_args(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    """etcd-style flags, with ``ETCD_*`` environment variables as defaults."""
    environ = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(
        prog="keel-store",
        allow_abbrev=False,
        description="Keel's store: an etcd v3 compatible, Raft-replicated key-value store.",
    )
    parser.add_argument("--version", "-version", action="store_true", help="print version")
    for name, default, help_text in FLAGS:
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


def peer_tls(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server, client) SSL contexts for the peer transport from the ``--peer-*`` flags."""
    if not (args.peer_cert_file or args.peer_key_file or args.peer_trusted_ca_file):
        return None, None
    if not (args.peer_cert_file and args.peer_key_file):
        raise FlagError("--peer-cert-file and --peer-key-file: give both for peer TLS")
    for flag in ("peer_cert_file", "peer_key_file", "peer_trusted_ca_file"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise FlagError(f"--{flag.replace('_', '-')}: {path}: no such file")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(args.peer_cert_file, args.peer_key_file)
    client = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=args.peer_trusted_ca_file or None
    )
    client.load_cert_chain(args.peer_cert_file, args.peer_key_file)
    if args.peer_trusted_ca_file:
        server.load_verify_locations(args.peer_trusted_ca_file)
    if args.peer_client_cert_auth:
        server.verify_mode = ssl.CERT_REQUIRED
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
        token_provider = tokens.parse(args.auth_token)
    except tokens.TokenSpecError as exc:
        raise FlagError(str(exc)) from None
    peer_url = _first(args.initial_advertise_peer_urls, "initial-advertise-peer-urls")
    spec = args.initial_cluster or f"{args.name}={peer_url}"
    try:
        cluster = Cluster(parse_initial_cluster(spec), args.initial_cluster_token)
        me = cluster.by_name(args.name)
    except ClusterConfigError as exc:
        raise FlagError(str(exc)) from None
    me.client_urls = [u.strip() for u in args.advertise_client_urls.split(",") if u.strip()]
    if args.max_snapshots < 1:
        raise FlagError(
            f"--max-snapshots={args.max_snapshots}: keel-store keeps at least one snapshot"
            " (the WAL is kept back to the oldest snapshot kept, so unlimited snapshots"
            " would keep every WAL entry)"
        )
    return NodeConfig(
        name=args.name,
        data_dir=Path(args.data_dir or f"{args.name}.etcd"),
        wal_dir=Path(args.wal_dir) if args.wal_dir else None,
        max_snapshots=args.max_snapshots,
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
    )


def go_duration(text: str, flag: str) -> float:
    """Seconds in a Go duration like ``10m``, ``1.5s``, ``500ms`` or ``1h30m``."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, number, pos = 0.0, "", 0
    while pos < len(text):
        ch = text[pos]
        if ch.isdigit() or ch == ".":
            number += ch
            pos += 1
            continue
        unit = next((u for u in ("ns", "us", "ms", "h", "m", "s") if text.startswith(u, pos)), None)
        if unit is None or not number:
            raise FlagError(f"--{flag}: {text!r} is not a duration (like 10m, 1s, 500ms)")
        total += float(number) * units[unit]
        number, pos = "", pos + len(unit)
    if number or not text:
        raise FlagError(f"--{flag}: {text!r} is not a duration (like 10m, 1s, 500ms)")
    return total


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
) -> GrpcServer:
    limit = args.max_request_bytes + validate.GRPC_OVERHEAD_BYTES
    # The client port speaks gRPC (HTTP/2) and, on the same socket as etcd's cmux, the
    # JSON gateway, /health, /version and /metrics (HTTP/1.1).
    server = GrpcServer(max_receive_message_length=limit, http1=http1.serve_connection)
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
    context = None
    if args.cert_file or args.key_file:
        if not (args.cert_file and args.key_file):
            raise FlagError("--cert-file and --key-file: give both for client TLS")
        context = server_ssl_context(
            args.cert_file, args.key_file, args.trusted_ca_file, bool(args.client_cert_auth)
        )
    for url in filter(None, (u.strip() for u in args.listen_client_urls.split(","))):
        host, port = host_port(url)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if url.startswith("https://"):
            if context is None:
                raise FlagError(f"--listen-client-urls: {url} needs --cert-file/--key-file")
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
    node = StoreNode(config)
    stop = asyncio.Event()
    node.on_failure = lambda _: stop.set()
    await node.start()
    # After recovery: the imported modules and the recovered state leave the collected
    # generations, so full collections do not stop the loop to scan the key space
    # (keel_store.server.gc_policy). Process-wide, hence here and not in StoreNode.
    gc_policy = GcPolicy()
    gc_policy.install()
    kv = kv_service.KVService(node, args.max_txn_ops)
    grpc_stats = GrpcStats()
    client_gateway = gateway.Gateway(node, kv, grpc_stats)
    server = _server(node, kv, args, grpc_stats, client_gateway)
    gateways: list[gateway.Gateway] = []
    # A proposal with no other request in progress is handled at once (StoreNode.alone).
    node.alone = lambda: (
        server.unary_calls + client_gateway.calls + sum(g.calls for g in gateways) <= 1
    )
    await server.start()
    for url in filter(None, (u.strip() for u in args.listen_metrics_urls.split(","))):
        gw = gateway.Gateway(node, kv, grpc_stats)
        await gw.listen(*host_port(url))
        gateways.append(gw)
    log.info("serving clients on %s as member %x", args.listen_client_urls, node.member_id)
    systemd.notify()  # Type=notify: the unit is active once clients can connect
    tasks = []
    retention = _retention_seconds(args.auto_compaction_retention, args.auto_compaction_mode)
    if retention > 0:
        tasks.append(asyncio.create_task(auto_compact(node, args.auto_compaction_mode, retention)))
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
        handlers = log_handlers(args.log_outputs)
        for handler in handlers:
            handler.setFormatter(JsonFormatter())
        logging.basicConfig(
            level=args.log_level.upper().replace("WARN", "WARNING")
            if args.log_level.lower() != "warning"
            else "WARNING",
            handlers=handlers,
        )
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
