"""``keel-store``: the store daemon, taking etcd's flags and ``ETCD_*`` variables.

Someone who runs etcd can swap the binary name: every flag of etcd 3.4 is taken
(:mod:`keel_store.flags`, with ``--config-file`` and the ``ETCD_*`` variables; the
TLS flags in :mod:`keel_store.tls_flags`; the flags turned into the member's settings in
:mod:`keel_store.settings`). This module runs the member: discovery, the corruption
check at start, the client server and its gateways, auto-compaction, JSON logs.

``keel-store snapshot status|restore ...`` are etcdctl's snapshot commands for keel-store
(:mod:`keel_store.snapshot_cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import resource
import signal
import ssl
import sys
import time
from collections import deque

from keel_core import systemd
from keel_store import eventloop, snapshot_cli, srv_discovery, v2discovery
from keel_store.flags import (
    DURATION_FLAGS,
    FLAGS,
    FlagError,
    go_duration,
    parse_args,
    url_list,
)
from keel_store.mvcc import validate
from keel_store.mvcc.commands import Kind
from keel_store.mvcc.keyspace import collector_paused
from keel_store.pb import electiongrpc, healthgrpc, lockgrpc, rpcgrpc, rpcpb
from keel_store.server import (
    auth_service,
    corruption,
    election_service,
    gateway,
    h2conn,
    health_service,
    identity,
    kv_service,
    lock_service,
    other_services,
    watch_stream,
)
from keel_store.server.gc_policy import GcPolicy
from keel_store.server.grpc_metrics import GrpcStats, instrument
from keel_store.server.grpc_server import GrpcServer
from keel_store.server.members import ClusterConfigError
from keel_store.server.node import NodeConfig, StoreNode
from keel_store.server.transport import host_port
from keel_store.settings import access_policy, connection_options, node_config
from keel_store.tls_flags import client_tls, peer_tls

__all__ = [
    "DURATION_FLAGS",
    "FLAGS",
    "FlagError",
    "JsonFormatter",
    "access_policy",
    "client_tls",
    "connection_options",
    "go_duration",
    "log_handlers",
    "main",
    "node_config",
    "parse_args",
    "peer_tls",
    "serve",
]
"""The daemon, and the flag handling it is made of (re-exported for its callers)."""

log = logging.getLogger("keel_store")


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
        if target > max(kv.compact_revision, 0):  # as etcd's compactors, never to 0
            with contextlib.suppress(Exception):
                await node.propose(Kind.COMPACT, rpcpb.CompactionRequest(revision=target))


def _server(
    node: StoreNode,
    kv: kv_service.KVService,
    args: argparse.Namespace,
    stats: GrpcStats,
    http1: gateway.Gateway,
    *,
    watch: watch_stream.WatchService,
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
    rpcgrpc.add_WatchServicer_to_server(watch, counted)
    rpcgrpc.add_LeaseServicer_to_server(other_services.LeaseService(node), counted)
    rpcgrpc.add_ClusterServicer_to_server(other_services.ClusterService(node), counted)
    rpcgrpc.add_MaintenanceServicer_to_server(other_services.MaintenanceService(node), counted)
    rpcgrpc.add_AuthServicer_to_server(auth_service.AuthService(node), counted)
    lockgrpc.add_LockServicer_to_server(lock_service.LockService(node, kv), counted)
    electiongrpc.add_ElectionServicer_to_server(election_service.ElectionService(node, kv), counted)
    healthgrpc.add_HealthServicer_to_server(health_service.HealthService(), counted)
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
    """Run the member until SIGINT/SIGTERM or its removal from the cluster (exit
    status 0), or until its Raft processing fails, e.g. on a disk that cannot be
    written (status 1)."""
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
    if args.discovery_srv and not _has_wal(config):
        try:
            args = await _discover_srv(args)
        except srv_discovery.SrvDiscoveryError as exc:
            log.error("discovery failed (error setting up initial cluster: %s)", exc)
            return 1
        config = node_config(args)
    client_ssl = client_tls(args)  # flag errors before the member starts
    options = connection_options(args)
    access = access_policy(args)
    try:
        await identity.resolve(config, _has_wal(config))
    except ClusterConfigError as exc:
        log.error("%s", exc)
        return 1
    node = StoreNode(config)
    stop = asyncio.Event()
    node.on_failure = lambda _: stop.set()
    node.on_removed = stop.set  # exit status 0, as etcd's after its removal
    # Recovery runs without the cyclic collector: the snapshot's key space and the
    # WAL's committed entries, applied again, make no cycles, and the collections their
    # allocations set off (each followed by a refreeze) took a third of the replay (80k
    # puts after a snapshot of 120k keys: 0.58 s without them, 0.82-0.91 s with). What
    # the imports left is collected first, while the heap is small; after recovery the
    # heap is frozen without a full collection, which scanned 1.2M objects in 0.2 s and
    # found nothing. Then full collections do not stop the loop to scan the key space
    # (keel_store.server.gc_policy). Process-wide, hence here and not in StoreNode.
    gc.collect()
    gc_policy = GcPolicy()
    with collector_paused():
        await node.start()
        await node.replayed.wait()
        gc_policy.install(collect=False)
    if args.experimental_initial_corrupt_check:
        try:
            await corruption.initial_check(node)
        except corruption.CorruptionError as exc:
            log.error("the member stops: %s", exc)
            gc_policy.uninstall()
            await node.stop()
            return 1
    kv = kv_service.KVService(node, args.max_txn_ops)
    grpc_stats = GrpcStats(handling_time=args.metrics == "extensive")
    # --cors and --host-whitelist guard the client URLs' HTTP side, as etcd's
    # accessController; etcd's --listen-metrics-urls handler has neither.
    interval = go_duration(
        args.experimental_watch_progress_notify_interval,
        "experimental-watch-progress-notify-interval",
    )
    limit = args.max_request_bytes + validate.GRPC_OVERHEAD_BYTES
    watch = watch_stream.WatchService(node, interval, limit)
    client_gateway = gateway.Gateway(
        node,
        kv,
        grpc_stats,
        access,
        json_api=args.enable_grpc_gateway,
        watch=watch,
        max_message=limit,
    )
    server = _server(
        node, kv, args, grpc_stats, client_gateway, watch=watch, context=client_ssl, options=options
    )
    gateways: list[gateway.Gateway] = []
    # A proposal with no other request in progress is handled at once (StoreNode.alone).
    node.alone = lambda: (
        server.unary_calls + client_gateway.calls + sum(g.calls for g in gateways) <= 1
    )
    await server.start()
    for url in filter(None, (u.strip() for u in args.listen_metrics_urls.split(","))):
        gw = gateway.Gateway(node, kv, grpc_stats, metrics_only=True)
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


async def _discover_srv(args: argparse.Namespace) -> argparse.Namespace:
    """--discovery-srv: the initial cluster from the domain's SRV records (in a thread:
    the lookups block)."""
    spec = await asyncio.to_thread(
        srv_discovery.initial_cluster,
        args.discovery_srv,
        args.discovery_srv_name,
        args.name,
        url_list(args.initial_advertise_peer_urls),
    )
    log.info("discovered the initial cluster", extra={"initial-cluster": spec})
    return argparse.Namespace(**{**vars(args), "initial_cluster": spec, "discovery_srv": ""})


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


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one, as Go's runtime does for
    etcd when it starts (Go 1.19+): under systemd's default soft limit of 1,024, a
    member would refuse connections past about a thousand clients (etcdctl check perf
    xl opens 1,000). ``/debug/vars`` reports the limit (``file_descriptor_limit``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # a hard limit the kernel refuses
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
        raise_open_files_limit()
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
