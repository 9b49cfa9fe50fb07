"""etcd 3.4's whole command line: every flag taken, each doing what it does in etcd
or, where keel-store has nothing it could tune, refused or logged as ignored."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keel_store import compat_flags, daemon
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcpb
from keel_store.raft.types import Entry, Snapshot, SnapshotMeta
from keel_store.server import metrics, tokens
from keel_store.server.auth_service import AuthService
from keel_store.server.exposition import render
from keel_store.server.grpc_metrics import GrpcStats, instrument
from keel_store.server.node import StoreNode
from keel_store.wal import MemoryFileSystem, NodeStorage

from .conftest import node_configs, start_members

_ETCD_34_HELP = """
name data-dir wal-dir snapshot-count heartbeat-interval election-timeout
initial-election-tick-advance listen-peer-urls listen-client-urls max-snapshots max-wals
quota-backend-bytes backend-batch-interval backend-batch-limit max-txn-ops
max-request-bytes max-concurrent-streams grpc-keepalive-min-time grpc-keepalive-interval
grpc-keepalive-timeout initial-advertise-peer-urls initial-cluster initial-cluster-state
initial-cluster-token advertise-client-urls discovery discovery-fallback discovery-proxy
discovery-srv discovery-srv-name strict-reconfig-check pre-vote auto-compaction-retention
auto-compaction-mode enable-v2 cert-file key-file client-cert-auth client-crl-file
client-cert-allowed-hostname trusted-ca-file auto-tls peer-cert-file peer-key-file
peer-client-cert-auth peer-trusted-ca-file peer-cert-allowed-cn peer-cert-allowed-hostname
peer-auto-tls peer-crl-file cipher-suites cors host-whitelist auth-token bcrypt-cost
auth-token-ttl enable-pprof metrics listen-metrics-urls logger log-outputs log-level proxy
proxy-failure-wait proxy-refresh-interval proxy-dial-timeout proxy-write-timeout
proxy-read-timeout experimental-initial-corrupt-check experimental-corrupt-check-time
experimental-enable-v2v3 experimental-backend-bbolt-freelist-type
experimental-enable-lease-checkpoint experimental-compaction-batch-limit
experimental-peer-skip-client-san-verification experimental-watch-progress-notify-interval
experimental-warning-apply-duration force-new-cluster debug log-package-levels
"""
ETCD_34_FLAGS = _ETCD_34_HELP.split()
"""``etcd --help`` of Debian's etcd-server 3.4.23, flag names in its order."""


def _known_flags() -> set[str]:
    return {name for name, _, _ in [*daemon.FLAGS, *compat_flags.COMPAT_FLAGS]}


def test_the_list_is_etcds_own() -> None:
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.skip("Debian's etcd-server is not installed")
    out = subprocess.run([etcd, "--help"], capture_output=True, text=True, check=False)
    listed = re.findall(r"^\s+--([a-z0-9-]+)", out.stdout + out.stderr, re.MULTILINE)
    assert listed == ETCD_34_FLAGS


def test_every_etcd_flag_is_taken() -> None:
    missing = [name for name in ETCD_34_FLAGS if name not in _known_flags()]
    assert missing == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bcrypt-cost=3"], "--bcrypt-cost=3: must be from 4 to 31"),
        (["--bcrypt-cost=32"], "--bcrypt-cost=32"),
        (["--auth-token-ttl=0"], "--auth-token-ttl=0: must be a positive"),
        (["--max-wals=-1"], "--max-wals=-1"),
        (["--metrics=all"], "--metrics: 'all' is not 'basic' or 'extensive'"),
        (["--experimental-warning-apply-duration=soon"], "experimental-warning-apply-duration"),
        (["--backend-batch-interval=1x"], "backend-batch-interval"),
        (["--experimental-backend-bbolt-freelist-type=list"], "'list' is not 'map' or 'array'"),
        (["--proxy=on"], "--proxy=on: keel-store has no proxy mode"),
        (["--proxy=maybe"], "--proxy: 'maybe' is not"),
        (
            ["--discovery=https://discovery.etcd.io/x", "--initial-cluster=a=http://h:1"],
            'Choose one of "initial-cluster", "discovery" or "discovery-srv"',
        ),
        (
            ["--discovery-srv=example.com", "--initial-cluster=a=http://h:1"],
            "multiple discovery or bootstrap flags are set",
        ),
        (
            ["--discovery-srv=example.com", "--discovery=https://discovery.etcd.io/x"],
            "multiple discovery or bootstrap flags are set",
        ),
        (
            ["--name=m0", "--discovery-srv-name=east"],
            'couldn\'t find local name "m0" in the initial cluster configuration',
        ),
        (["--discovery-fallback=retry"], "'retry' is not 'exit' or 'proxy'"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(argv: list[str], message: str) -> None:
    with pytest.raises(daemon.FlagError, match=re.escape(message)):
        daemon.node_config(daemon.parse_args(argv, {}))


@pytest.mark.timeout(60)
def test_refused_values_exit_before_serving(tmp_path: Path, capsys: Any) -> None:
    assert daemon.main([f"--data-dir={tmp_path / 'd'}", "--proxy=readonly"]) == 2
    assert "--proxy=readonly" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_ignored_flags_are_logged_only_when_set(caplog: Any) -> None:
    args = daemon.parse_args(
        [
            "--enable-pprof",
            "--experimental-enable-lease-checkpoint-persist",
            "--enable-v2",
            "--log-package-levels=etcdserver=DEBUG",
            "--backend-batch-limit=500",  # no effect either way: not logged
            "--experimental-enable-v2v3=/v2",
        ],
        {},
    )
    with caplog.at_level(logging.WARNING, logger="keel_store"):
        daemon.node_config(args)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "--enable-pprof=True: ignored: no Go profiler" in logged
    assert "--experimental-enable-lease-checkpoint-persist=True: ignored" in logged
    assert "--enable-v2=True: ignored: the v2 API is not served" in logged
    assert "--log-package-levels=etcdserver=DEBUG" in logged
    assert "--experimental-enable-v2v3=/v2" in logged
    assert "backend-batch-limit" not in logged
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keel_store"):
        daemon.node_config(daemon.parse_args(["--backend-batch-interval=0"], {}))
    assert caplog.records == []


def test_environment_variables_reach_the_new_flags() -> None:
    args = daemon.parse_args(
        [], {"ETCD_BCRYPT_COST": "4", "ETCD_MAX_WALS": "0", "ETCD_METRICS": "extensive"}
    )
    config = daemon.node_config(args)
    assert (config.bcrypt_cost, config.max_wals, args.metrics) == (4, 0, "extensive")


@pytest.mark.timeout(60)
def test_debug_turns_on_debug_logging(tmp_path: Path, monkeypatch: Any) -> None:
    levels: list[Any] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    # --proxy=on stops it right after the logging is set up.
    assert daemon.main([f"--data-dir={tmp_path}", "--debug", "--proxy=on"]) == 2
    assert daemon.main([f"--data-dir={tmp_path}", "--log-level=error", "--proxy=on"]) == 2
    assert levels == ["DEBUG", "ERROR"]


# ---------------------------------------------------------------- --auth-token-ttl


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_simple_token_expires_ttl_after_its_last_use() -> None:
    clock = _Clock()
    provider = tokens.SimpleTokens(ttl=10, clock=clock)
    token = provider.assign("alice", 1)
    clock.now += 9
    assert provider.info(token) == ("alice", None)  # used: ten more seconds
    clock.now += 9.5
    assert provider.info(token) == ("alice", None)
    clock.now += 10.5
    assert provider.info(token) is None
    assert provider.info(token) is None


def test_expired_tokens_are_swept_when_new_ones_are_issued() -> None:
    clock = _Clock()
    provider = tokens.SimpleTokens(ttl=5, clock=clock)
    for _ in range(1000):  # a client that authenticates per command, as etcdctl does
        provider.assign("bob", 1)
        clock.now += 0.1
    assert len(provider) <= 51 + 10  # the last five seconds' worth, plus one sweep period
    clock.now += 6
    provider.assign("bob", 1)
    assert len(provider) == 1


def test_the_ttl_flag_reaches_simple_tokens_only() -> None:
    simple = daemon.node_config(daemon.parse_args(["--auth-token-ttl=42"], {})).token_provider
    assert isinstance(simple, tokens.SimpleTokens)
    assert simple.ttl == 42


# ---------------------------------------------------------------- --metrics


def _exposition(stats: GrpcStats) -> dict[str, Any]:
    async def put(request: Any, context: Any) -> Any:
        await asyncio.sleep(0.02)
        return rpcpb.PutResponse()

    handlers = {
        "Put": grpc.unary_unary_rpc_method_handler(put),
        "Range": grpc.unary_unary_rpc_method_handler(put),
    }

    class Server:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            self.handlers = handlers

    server = Server()
    instrument(server, stats).add_registered_method_handlers("etcdserverpb.KV", handlers)
    for _ in range(3):
        asyncio.run(server.handlers["Put"].unary_unary(rpcpb.PutRequest(), None))
    text = render(metrics.network_families(_NoPeers(), stats)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


class _NoPeers:
    class transport:  # the attribute the families read
        sent_bytes: dict[int, int] = {}
        received_bytes: dict[int, int] = {}


def test_extensive_metrics_add_the_handling_time_histogram() -> None:
    fams = _exposition(GrpcStats(handling_time=True))
    handling = fams["grpc_server_handling_seconds"]
    assert handling.type == "histogram"
    count = {
        s.labels["grpc_method"]: s.value for s in handling.samples if s.name.endswith("_count")
    }
    assert count == {"Put": 3, "Range": 0}  # every method listed, as go-grpc-prometheus
    total = next(
        s.value
        for s in handling.samples
        if s.name.endswith("_sum") and s.labels["grpc_method"] == "Put"
    )
    assert total >= 3 * 0.02
    buckets = [s.labels["le"] for s in handling.samples if s.name.endswith("_bucket")][:12]
    assert (buckets[0], buckets[-1]) == ("0.005", "+Inf")


def test_basic_metrics_have_no_histogram() -> None:
    fams = _exposition(GrpcStats())
    assert "grpc_server_handling_seconds" not in fams
    assert "grpc_server_started" in fams


# ---------------------------------------------------------------- --max-wals


def _segments(fs: MemoryFileSystem) -> list[str]:
    return sorted(n for n in fs.list("d/wal") if n.endswith(".wal"))


@pytest.mark.parametrize(("max_wals", "left"), [(1, 1), (3, 3), (None, 8)])
def test_max_wals_keeps_that_many_segments_once_unneeded(max_wals: int | None, left: int) -> None:
    fs = MemoryFileSystem()
    storage, _ = NodeStorage.open(fs, "d", keep_snapshots=1, max_wals=max_wals, segment_bytes=4096)
    index = 0
    for _ in range(8):  # eight segments of entries
        entries = [Entry(term=1, index=index + i + 1, data=b"x" * 500) for i in range(8)]
        storage.save(entries)
        index += 8
    assert len(_segments(fs)) >= 8
    storage.save_snapshot(Snapshot(meta=SnapshotMeta(index=index, term=1), data=b"s"))
    fs.settle()
    assert len(_segments(fs)) == max(left, 1)


def test_a_needed_segment_stays_whatever_max_wals_says() -> None:
    fs = MemoryFileSystem()
    storage, _ = NodeStorage.open(fs, "d", keep_snapshots=1, max_wals=1, segment_bytes=4096)
    for n in range(6):
        storage.save([Entry(term=1, index=8 * n + i + 1, data=b"x" * 500) for i in range(8)])
    before = _segments(fs)
    storage.save_snapshot(Snapshot(meta=SnapshotMeta(index=2, term=1), data=b"s"))
    fs.settle()
    assert _segments(fs) == before  # the snapshot covers almost nothing: all needed


# ---------------------------------------------------------------- apply warnings, bcrypt


def test_a_slow_apply_is_logged_with_its_entry(tmp_path: Path, caplog: Any) -> None:
    async def run() -> None:
        (config,) = node_configs(tmp_path, 1, "--experimental-warning-apply-duration=0s")
        node = StoreNode(config)
        await start_members([node])
        try:
            with caplog.at_level(logging.WARNING, logger="keel_store"):
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k", value=b"v"))
        finally:
            await node.stop()

    asyncio.run(run())
    slow = [r for r in caplog.records if r.getMessage() == "apply request took too long"]
    assert any(getattr(r, "request", None) == "put" for r in slow)
    assert all(r.__dict__["expected-duration"] == "0.0ms" for r in slow)


def test_no_warning_under_the_default_duration(tmp_path: Path, caplog: Any) -> None:
    async def run() -> None:
        (config,) = node_configs(tmp_path, 1)
        node = StoreNode(config)
        await start_members([node])
        try:
            with caplog.at_level(logging.WARNING, logger="keel_store"):
                for i in range(20):
                    await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%d" % i, value=b"v"))
        finally:
            await node.stop()

    asyncio.run(run())
    assert not [r for r in caplog.records if r.getMessage() == "apply request took too long"]


class _Context:
    def invocation_metadata(self) -> tuple[()]:
        return ()


@pytest.mark.parametrize("cost", [4, 5])
def test_passwords_are_hashed_at_the_bcrypt_cost(tmp_path: Path, cost: int) -> None:
    async def run() -> bytes:
        (config,) = node_configs(tmp_path, 1, f"--bcrypt-cost={cost}")
        node = StoreNode(config)
        await start_members([node])
        try:
            request = rpcpb.AuthUserAddRequest(name="alice", password="secret")
            await AuthService(node).UserAdd(request, _Context())
            return node.sm.auth.users["alice"].password_hash
        finally:
            await node.stop()

    assert asyncio.run(run()).startswith(b"$2b$%02d$" % cost)
