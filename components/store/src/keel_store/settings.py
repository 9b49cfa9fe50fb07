"""Validated flags -> what the member and its servers run with (:class:`NodeConfig`,
the HTTP/2 connection options, the HTTP access policy)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from keel_store import compat_flags
from keel_store.flags import FlagError, data_dir_of, first_url, go_duration
from keel_store.server import gateway, h2conn, tokens
from keel_store.server.config import NodeConfig
from keel_store.server.members import Cluster, ClusterConfigError, parse_initial_cluster
from keel_store.tls_flags import peer_tls

log = logging.getLogger("keel_store")


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
    if sum(map(bool, (args.discovery, args.initial_cluster, args.discovery_srv))) > 1:
        raise FlagError(
            "multiple discovery or bootstrap flags are set. Choose one of"
            ' "initial-cluster", "discovery" or "discovery-srv"'
        )
    if args.discovery_fallback not in ("exit", "proxy"):
        raise FlagError(
            f"--discovery-fallback: {args.discovery_fallback!r} is not 'exit' or 'proxy'"
        )
    peer_url = first_url(args.initial_advertise_peer_urls, "initial-advertise-peer-urls")
    if args.discovery_srv_name and not (args.discovery_srv or args.initial_cluster):
        # etcd drops its default --initial-cluster for --discovery-srv-name alone.
        raise FlagError(
            f"couldn't find local name {json.dumps(args.name)} in the initial cluster"
            " configuration"
            " (--discovery-srv-name without --discovery-srv or --initial-cluster)"
        )
    # With --discovery or --discovery-srv, the member alone until the real initial
    # cluster is known (keel_store.daemon asks for it; a member with a WAL does not).
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
    if args.enable_v2:
        ignored.append("--enable-v2=True: ignored: the v2 API is not served")
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
    if args.experimental_snapshot_bytes < 0:
        raise FlagError(
            f"--experimental-snapshot-bytes={args.experimental_snapshot_bytes}: must be 0"
            " (by --snapshot-count only) or more"
        )
    if args.max_snapshots < 1:
        raise FlagError(
            f"--max-snapshots={args.max_snapshots}: keel-store keeps at least one snapshot"
            " (the WAL is kept back to the oldest snapshot kept, so unlimited snapshots"
            " would keep every WAL entry)"
        )
    return NodeConfig(
        name=args.name,
        data_dir=data_dir_of(args),
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
        snapshot_count=args.snapshot_count or 100_000,  # etcd: 0 is the default
        snapshot_bytes=args.experimental_snapshot_bytes,
        quota_bytes=args.quota_backend_bytes or (2 << 30),
        fsync=not args.unsafe_no_fsync,
        background_snapshots=True,
        join_existing=args.initial_cluster_state == "existing",
        peer_server_ssl=server_ssl,
        peer_client_ssl=client_ssl,
        listen_peer_url=first_url(args.listen_peer_urls, "listen-peer-urls"),
        token_provider=token_provider,
        bcrypt_cost=args.bcrypt_cost,
        max_request_bytes=args.max_request_bytes,
        warn_apply_seconds=warn_apply,
        lease_checkpoint_interval=checkpoints if args.experimental_enable_lease_checkpoint else 0,
    )


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
