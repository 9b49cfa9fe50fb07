"""Flags, membership, peer encoding, discovery layout, plugin hooks: no processes."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from keel_store import daemon, discovery, plugin
from keel_store.bbolt.reader import read_db
from keel_store.mvcc import commands, snapshot
from keel_store.mvcc.commands import Kind
from keel_store.mvcc.errors import EtcdError
from keel_store.mvcc.etcd_db import etcd_database
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb
from keel_store.raft import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from keel_store.server import transport
from keel_store.server.members import (
    Cluster,
    ClusterConfigError,
    Member,
    member_id,
    parse_initial_cluster,
)


def test_flags_env_and_precedence() -> None:
    env = {
        "ETCD_NAME": "envname",
        "ETCD_HEARTBEAT_INTERVAL": "50",
        "ETCD_ELECTION_TIMEOUT": "500",
        "ETCD_UNSAFE_NO_FSYNC": "true",
    }
    args = daemon.parse_args(["-name", "flagname", "--snapshot-count=10"], env)
    assert args.name == "flagname", "a flag beats the environment"
    assert (args.heartbeat_interval, args.election_timeout) == (50, 500)
    assert args.snapshot_count == 10
    assert args.unsafe_no_fsync is True
    with pytest.raises(daemon.FlagError, match="ETCD_SNAPSHOT_COUNT='many'"):
        daemon.parse_args([], {"ETCD_SNAPSHOT_COUNT": "many"})


def test_node_config_defaults_and_errors(tmp_path: Path) -> None:
    args = daemon.parse_args(["--name=n1", f"--data-dir={tmp_path}"], {})
    config = daemon.node_config(args)
    assert config.cluster.by_name("n1").peer_urls == ["http://localhost:2380"]
    assert config.min_lease_ttl == 2
    args = daemon.parse_args(["--name=x", "--initial-cluster=a=http://127.0.0.1:1"], {})
    with pytest.raises(daemon.FlagError, match="--name 'x' is not in it"):
        daemon.node_config(args)
    args = daemon.parse_args(["--peer-cert-file=/x"], {})
    with pytest.raises(daemon.FlagError, match="--peer-cert-file and --peer-key-file"):
        daemon.node_config(args)
    args = daemon.parse_args(["--peer-cert-file=/nope.crt", "--peer-key-file=/nope.key"], {})
    with pytest.raises(daemon.FlagError, match=r"--peer-cert-file: /nope\.crt: no such file"):
        daemon.node_config(args)
    args = daemon.parse_args(["--election-timeout=200"], {})
    with pytest.raises(daemon.FlagError, match="--election-timeout"):
        daemon.node_config(args)
    args = daemon.parse_args(["--auth-token=jwt,sign-method=RS256"], {})
    with pytest.raises(daemon.FlagError, match="--auth-token: jwt needs pub-key"):
        daemon.node_config(args)
    args = daemon.parse_args([], {"ETCD_AUTH_TOKEN": "simple"})
    assert daemon.node_config(args).token_provider is not None


def test_wal_dir_max_snapshots_and_pre_vote(tmp_path: Path) -> None:
    args = daemon.parse_args(
        [f"--data-dir={tmp_path}/d", "--max-snapshots=4"], {"ETCD_WAL_DIR": f"{tmp_path}/w"}
    )
    config = daemon.node_config(args)
    assert (config.wal_dir, config.max_snapshots) == (tmp_path / "w", 4)
    defaults = daemon.node_config(daemon.parse_args([f"--data-dir={tmp_path}/d"], {}))
    assert (defaults.wal_dir, defaults.max_snapshots) == (None, 2)
    assert defaults.pre_vote is True
    assert daemon.node_config(daemon.parse_args(["--pre-vote=false"], {})).pre_vote is False
    assert daemon.node_config(daemon.parse_args([], {"ETCD_PRE_VOTE": "false"})).pre_vote is False
    with pytest.raises(daemon.FlagError, match="--max-snapshots=0: keel-store keeps at least"):
        daemon.node_config(daemon.parse_args(["--max-snapshots=0"], {}))


def test_membership_and_recovery_flags(capsys: pytest.CaptureFixture[str]) -> None:
    fields = ("strict_reconfig_check", "force_new_cluster", "initial_election_tick_advance")

    def parsed(argv: list[str], env: dict[str, str]) -> tuple[bool, ...]:
        config = daemon.node_config(daemon.parse_args(argv, env))
        return tuple(getattr(config, f) for f in fields)

    assert parsed([], {}) == (True, False, True)  # etcd 3.4's defaults
    flags = ["--strict-reconfig-check=false", "--force-new-cluster"]
    assert parsed([*flags, "--initial-election-tick-advance=false"], {}) == (False, True, False)
    env = {"ETCD_STRICT_RECONFIG_CHECK": "false", "ETCD_FORCE_NEW_CLUSTER": "true"}
    assert parsed([], {**env, "ETCD_INITIAL_ELECTION_TICK_ADVANCE": "0"}) == (False, True, False)
    with pytest.raises(daemon.FlagError, match="ETCD_FORCE_NEW_CLUSTER='yes please'"):
        daemon.parse_args([], {"ETCD_FORCE_NEW_CLUSTER": "yes please"})
    with pytest.raises(SystemExit) as exit_:
        daemon.parse_args(["--strict-reconfig-check=maybe"], {})
    assert exit_.value.code == 2
    assert "--strict-reconfig-check" in capsys.readouterr().err


def test_cluster_ids_are_stable_and_token_dependent() -> None:
    spec = "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3"
    one = Cluster(parse_initial_cluster(spec), "t1")
    two = Cluster(parse_initial_cluster(spec), "t1")
    other = Cluster(parse_initial_cluster(spec), "t2")
    assert one.members.keys() == two.members.keys()
    assert one.cluster_id == two.cluster_id != other.cluster_id
    assert len(set(one.members)) == 3
    with pytest.raises(ClusterConfigError, match="not NAME=PEER-URL"):
        parse_initial_cluster("a=http://x:1,oops")


def test_message_round_trip() -> None:
    snap = Snapshot(SnapshotMeta(7, 2, ConfState(voters=(1, 2), learners=(3,))), b"state")
    m = Message(
        MessageType.APPEND,
        2,
        1,
        5,
        log_term=4,
        index=9,
        entries=(Entry(5, 10, EntryType.NORMAL, b"x"), Entry(5, 11, EntryType.CONF_CHANGE, b"")),
        commit=8,
        reject=True,
        reject_hint=3,
        snapshot=snap,
        context=b"ctx",
    )
    assert transport.decode_message(transport.encode_message(m)) == m
    for reject, quiet in ((False, True), (True, True), (False, False)):
        flagged = replace(m, reject=reject, quiet=quiet)
        assert transport.decode_message(transport.encode_message(flagged)) == flagged
    with pytest.raises(Exception):  # noqa: B017, PT011 - struct.error or ValueError
        transport.decode_message(b"\x01\x02")


def test_snapshot_framing_for_etcdctl() -> None:
    """etcdctl finds the SHA-256 after the database by the size (``size % 512 == 32``):
    etcd's database, whole bbolt pages, needs no padding, and keel-store's neither."""
    sm = StateMachine()
    for keys in (0, 1, 100, 3000):
        for i in range(keys):
            sm.put(rpcpb.PutRequest(key=b"k%d" % i, value=b"v" * (i % 700)))
        assert len(etcd_database(sm)) % 512 == 0


def test_discovery_layout() -> None:
    assert discovery.service_key("web", "prod.keel.local", "a1") == "/skydns/local/keel/prod/web/a1"
    rec = discovery.ServiceRecord(host="10.0.0.5", port=8080)
    assert rec.to_json() == b'{"host": "10.0.0.5", "port": 8080, "priority": 10}'
    assert discovery.ServiceRecord.from_json(rec.to_json()) == rec
    with pytest.raises(discovery.RecordError, match="needs a string 'host'"):
        discovery.ServiceRecord.from_json(b'{"port": 1}', "/skydns/x")
    with pytest.raises(discovery.RecordError):
        discovery.service_key("a/b", "keel.local")


def test_plugin_hooks() -> None:
    from keel_core.schemas import ImageDefinition

    image = ImageDefinition(name="keel", version="1", components=["store"])
    contribution = plugin.keel_image_contribution(image)
    assert contribution is not None
    assert "keel-store.service" in contribution.units
    assert plugin.keel_image_contribution(ImageDefinition(name="keel", version="1")) is None
    assert plugin.keel_health_checks()[0].command.startswith("python3 -m keel_store.health")


def test_json_log_lines_carry_the_records_fields_and_tracebacks() -> None:
    formatter = daemon.JsonFormatter()
    record = logging.LogRecord(
        "keel_store.wal", logging.WARNING, "f.py", 1, "cutting %s", ("a torn tail",), None
    )
    record.__dict__.update({"path": "/data/member/wal/0.wal", "offset": 4096})
    line = json.loads(formatter.format(record))
    assert line["msg"] == "cutting a torn tail"
    assert (line["level"], line["logger"]) == ("warning", "keel_store.wal")
    assert (line["path"], line["offset"]) == ("/data/member/wal/0.wal", 4096)
    assert "args" not in line
    assert "error" not in line
    try:
        raise OSError(5, "Input/output error")
    except OSError:
        failed = logging.LogRecord("x", logging.ERROR, "f.py", 1, "sync", (), sys.exc_info())
    line = json.loads(formatter.format(failed))
    assert "OSError: [Errno 5] Input/output error" in line["error"]


def test_log_outputs_as_etcd_takes_them(tmp_path: Path) -> None:
    assert daemon.parse_args([], {}).log_outputs == "default"
    handlers = daemon.log_handlers(f"stderr,stdout,{tmp_path}/keel.log")
    streams = [getattr(h, "stream", None) for h in handlers[:2]]
    assert streams == [sys.stderr, sys.stdout]
    assert isinstance(handlers[2], logging.FileHandler)
    handlers[2].close()
    assert (tmp_path / "keel.log").exists()
    with pytest.raises(daemon.FlagError, match=r"--log-outputs: /no/such/dir/x\.log: No such"):
        daemon.log_handlers("/no/such/dir/x.log")
    with pytest.raises(daemon.FlagError, match="names no output"):
        daemon.log_handlers(" , ")


def test_client_server_flags_as_etcd_takes_them() -> None:
    """--max-concurrent-streams, --grpc-keepalive-*: etcd's defaults; 0 durations fall
    back to grpc-go's defaults as with etcd (which then passes no option to grpc-go)."""
    defaults = daemon.connection_options(daemon.parse_args([], {}))
    assert (defaults.max_streams, defaults.ping_min_time) == (2**32 - 1, 5.0)
    assert (defaults.keepalive_interval, defaults.keepalive_timeout) == (7200.0, 20.0)
    args = daemon.parse_args(
        [
            "--max-concurrent-streams=100",
            "--grpc-keepalive-min-time=1s",
            "-grpc-keepalive-interval=1m30s",
        ],
        {"ETCD_GRPC_KEEPALIVE_TIMEOUT": "500ms"},
    )
    options = daemon.connection_options(args)
    assert (options.max_streams, options.ping_min_time) == (100, 1.0)
    assert (options.keepalive_interval, options.keepalive_timeout) == (90.0, 0.5)
    zeros = daemon.parse_args(
        ["--grpc-keepalive-min-time=0", "--grpc-keepalive-interval=0", "--max-concurrent-streams=0"]
    )
    options = daemon.connection_options(zeros)
    assert (options.max_streams, options.ping_min_time) == (0, 300.0)
    assert (options.keepalive_interval, options.keepalive_timeout) == (7200.0, 20.0)
    # Negative durations parse in Go and, like 0, fall back to grpc-go's defaults.
    negative = daemon.parse_args(["--grpc-keepalive-timeout=-1s", "--grpc-keepalive-min-time=-5s"])
    options = daemon.connection_options(negative)
    assert (options.ping_min_time, options.keepalive_timeout) == (300.0, 20.0)


@pytest.mark.timeout(60)  # a flag wrongly accepted would run the daemon until killed
@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--max-concurrent-streams=-1", "--max-concurrent-streams=-1: not between 0 and"),
        ("--max-concurrent-streams=4294967296", "--max-concurrent-streams=4294967296: not"),
        ("--grpc-keepalive-min-time=5", "--grpc-keepalive-min-time: '5' is not a duration"),
        ("--grpc-keepalive-interval=2 h", "--grpc-keepalive-interval: '2 h' is not a duration"),
        ("--grpc-keepalive-timeout=1x", "--grpc-keepalive-timeout: '1x' is not a duration"),
        ("--cors=example.com", "--cors: 'example.com' is not an origin"),
        ("--cors=http://a.com:1,ftp://b.org", "--cors: 'ftp://b.org' is not an origin"),
        ("--cors=http://a.com/path", "--cors: 'http://a.com/path' is not an origin"),
        ("--cors=http://a.com:99999", "--cors: 'http://a.com:99999' is not an origin"),
    ],
)
def test_bad_client_server_flags_stop_the_daemon_before_it_serves(
    flag: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    assert daemon.main([flag, f"--data-dir={data_dir}", "--listen-client-urls="]) == 2
    assert message in capsys.readouterr().err
    assert not data_dir.exists()


def test_cors_and_host_whitelist_flags() -> None:
    policy = daemon.access_policy(daemon.parse_args([], {}))
    assert (policy.cors, policy.hosts) == (None, None)
    args = daemon.parse_args(
        ["--cors=http://a.com:1, https://b.org", "--host-whitelist=localhost,example.com"], {}
    )
    policy = daemon.access_policy(args)
    assert policy.cors == {"http://a.com:1", "https://b.org"}
    assert policy.hosts == {"localhost", "example.com"}
    assert policy.host_allowed("example.com:2379")
    assert policy.host_allowed("localhost")
    assert not policy.host_allowed("127.0.0.1:2379")
    assert not policy.host_allowed("")
    assert daemon.access_policy(daemon.parse_args(["--cors=", "--host-whitelist="])).hosts is None
    v6 = daemon.access_policy(daemon.parse_args(["--host-whitelist=::1"]))
    assert v6.host_allowed("[::1]:2379")
    assert not v6.host_allowed("[::2]:2379")


def test_member_and_cluster_ids_are_etcds() -> None:
    """The IDs etcd 3.4.23 gave three members started with these flags, and its cluster
    ID (read from ``etcdctl member list`` and ``member remove`` of a real cluster): the
    whole 64 bits of the SHA-1, the high bit set for two of them. An added member's ID
    hashes the time too."""
    spec = "m0=http://127.0.0.1:23800,m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802"
    cluster = Cluster(parse_initial_cluster(spec), "bench")
    assert {format(m.id, "x"): m.name for m in cluster.members.values()} == {
        "ac273365a8c28390": "m0",
        "bc4ce7888673a1a": "m1",
        "93a285fa77ab8d36": "m2",
    }
    assert format(cluster.cluster_id, "x") == "9e3265356ca52c03"
    urls = ["http://127.0.0.1:23803"]
    assert member_id(urls, "", 1_800_000_000) != member_id(urls, "", 1_800_000_001)


def test_a_joining_member_adopts_the_running_clusters_ids() -> None:
    """etcd's ValidateClusterAndAssignIDs: matched by peer URLs (in any order), the
    same number of members, else etcd's messages; then the IDs stick (``rekey``)."""
    spec = "a=http://h:1,b=http://h:2,c=http://h:3,c=http://h:4"
    remote = [
        Member(11, "a", ["http://h:1"]),
        Member(12, "b", ["http://h:2"]),
        Member(13, "", ["http://h:4", "http://h:3"], is_learner=True),
    ]
    cluster = Cluster(parse_initial_cluster(spec), "t")
    cluster.adopt(99, remote)
    assert cluster.cluster_id == 99
    assert cluster.id_of("c") == 13
    assert cluster.members[13].is_learner
    with pytest.raises(ClusterConfigError, match="member count is unequal"):
        Cluster(parse_initial_cluster(spec), "t").adopt(99, remote[:2])
    wrong = [*remote[:2], Member(12, "", ["http://h:5"])]
    with pytest.raises(ClusterConfigError, match=r"PeerURLs: no match found .*\(c, "):
        Cluster(parse_initial_cluster(spec), "t").adopt(99, wrong)
    cluster.rekey("a", 21, 98)
    assert (cluster.id_of("a"), cluster.cluster_id) == (21, 98)


def test_removed_members_are_kept_in_snapshots_and_etcds_bucket() -> None:
    """A removal is remembered (etcd's ``members_removed``) through a snapshot and in
    the bbolt file ``etcdctl snapshot save`` gets; the ID cannot be added again, and
    ``--force-new-cluster`` removes every other member."""
    sm = StateMachine()
    for mid in (1, 2, 3):
        sm.member_add(rpcpb.Member(ID=mid, peerURLs=[f"http://127.0.0.1:{mid}"]))
    sm.member_remove(rpcpb.MemberRemoveRequest(ID=2))
    back = snapshot.restore(snapshot.save(sm))
    assert back.removed == {2}
    assert set(back.members) == {1, 3}
    bucket = read_db(etcd_database(sm)).root.bucket(b"members_removed")
    assert dict(bucket.entries()) == {b"2": b"removed"}
    with pytest.raises(EtcdError, match="member not found"):  # etcd's ErrIDRemoved
        sm.member_add(rpcpb.Member(ID=2, peerURLs=["http://127.0.0.1:2"]))
    sm.keep_only_member(rpcpb.Member(ID=3))
    assert sm.removed == {1, 2}


def test_published_attributes_are_replicated_kept_and_in_etcds_rows() -> None:
    """A member's published name and client URLs (etcd's ``publish``) reach the member
    table, its listing, snapshots and etcd's ``members`` rows; a removed member's are
    refused, and a snapshot from before (four fields per member) still loads."""
    sm = StateMachine()
    for mid in (1, 2):
        sm.member_add(rpcpb.Member(ID=mid, peerURLs=[f"http://127.0.0.1:{mid}"]))
    urls = ["http://127.0.0.1:2379", "http://10.0.0.1:2379"]
    resp = commands.apply(
        sm, 7, commands.encode(Kind.MEMBER_ATTR, 5, rpcpb.Member(ID=2, name="b", clientURLs=urls))
    )[1]
    assert [(m.ID, m.name, list(m.clientURLs)) for m in resp.members] == [
        (1, "", []),
        (2, "b", urls),
    ]
    back = snapshot.restore(snapshot.save(sm))
    assert (back.members[2].name, back.members[2].client_urls) == ("b", urls)
    rows = read_db(etcd_database(sm)).root.bucket(b"members").items
    assert rows[b"2"] == (
        b'{"id":2,"peerURLs":["http://127.0.0.1:2"],"name":"b",'
        b'"clientURLs":["http://127.0.0.1:2379","http://10.0.0.1:2379"]}'
    )
    assert rows[b"1"] == b'{"id":1,"peerURLs":["http://127.0.0.1:1"]}'
    sm.member_remove(rpcpb.MemberRemoveRequest(ID=2))
    with pytest.raises(EtcdError, match="member not found"):
        sm.member_attr(rpcpb.Member(ID=2, name="b", clientURLs=urls))
    sm.member_attr(rpcpb.Member(ID=1, name="a", clientURLs=["http://127.0.0.1:1379"]))
    saved = snapshot.save(sm)
    head_end = saved.index(b"\n", len(snapshot.MAGIC))
    head = json.loads(saved[len(snapshot.MAGIC) : head_end])
    # An older keel-store unpacks four fields per member: a rolling update's follower
    # installs a newer leader's snapshot.
    assert all(len(row) == 4 for row in head["members"])
    del head["client_urls"]  # a snapshot from before
    old = saved[: len(snapshot.MAGIC)] + json.dumps(head).encode() + saved[head_end:]
    assert snapshot.restore(saved).members[1].client_urls == ["http://127.0.0.1:1379"]
    assert snapshot.restore(old).members[1].client_urls == []
