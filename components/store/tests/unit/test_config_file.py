"""--config-file: etcd's YAML settings file, with errors that name file, line and key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from keel_store import daemon


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "etcd.conf.yml"
    path.write_text(text)
    return str(path)


SAMPLE = """\
# as etcd's docs/etcd.conf.yml.sample lays it out
name: 'infra1'
data-dir: /var/lib/keel/infra1
wal-dir:
snapshot-count: 5000
heartbeat-interval: 50
election-timeout: 500
quota-backend-bytes: 0
listen-peer-urls: http://10.0.0.1:2380
listen-client-urls: http://10.0.0.1:2379,http://127.0.0.1:2379
max-snapshots: 3
max-wals: 4
initial-advertise-peer-urls: http://10.0.0.1:2380
advertise-client-urls: http://10.0.0.1:2379
initial-cluster: infra1=http://10.0.0.1:2380,infra2=http://10.0.0.2:2380
initial-cluster-token: 'etcd-cluster-7'
initial-cluster-state: 'existing'
strict-reconfig-check: false
enable-v2: false
enable-pprof: false
proxy: 'off'
client-transport-security:
  cert-file:
  key-file:
  client-cert-auth: false
  trusted-ca-file:
  auto-tls: false
peer-transport-security:
  cert-file: /etc/keel/peer.pem
  key-file: /etc/keel/peer-key.pem
  client-cert-auth: true
  trusted-ca-file: /etc/keel/ca.pem
  auto-tls: false
debug: false
log-outputs: [stderr]
auto-compaction-mode: revision
auto-compaction-retention: "1000"
experimental-watch-progress-notify-interval: 2000000000
experimental-warning-apply-duration: 250ms
force-new-cluster: false
"""


def test_the_sample_file_sets_what_the_flags_would(tmp_path: Path) -> None:
    args = daemon.parse_args([f"--config-file={_write(tmp_path, SAMPLE)}"], {})
    assert args.name == "infra1"
    assert args.data_dir == "/var/lib/keel/infra1"
    assert args.wal_dir == ""  # empty in the file: the default
    assert (args.snapshot_count, args.heartbeat_interval, args.election_timeout) == (
        5000,
        50,
        500,
    )
    assert args.listen_client_urls == "http://10.0.0.1:2379,http://127.0.0.1:2379"
    assert (args.max_snapshots, args.max_wals) == (3, 4)
    assert args.initial_cluster_state == "existing"
    assert args.initial_cluster_token == "etcd-cluster-7"
    assert (args.peer_cert_file, args.peer_key_file) == (
        "/etc/keel/peer.pem",
        "/etc/keel/peer-key.pem",
    )
    assert args.peer_client_cert_auth is True
    assert args.peer_trusted_ca_file == "/etc/keel/ca.pem"
    assert (args.cert_file, args.client_cert_auth) == ("", False)
    assert args.log_outputs == "stderr"
    assert args.auto_compaction_retention == "1000"
    # A time.Duration in etcd's file is nanoseconds; a string is a Go duration.
    assert daemon.go_duration(args.experimental_watch_progress_notify_interval, "x") == 2.0
    assert daemon.go_duration(args.experimental_warning_apply_duration, "x") == 0.25
    assert args.config_notes == []


def test_flags_and_environment_are_ignored_with_a_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: from-file\nheartbeat-interval: 20\n")
    args = daemon.parse_args(
        [f"--config-file={path}", "--name=from-flag", "--snapshot-count=7"],
        {"ETCD_ELECTION_TIMEOUT": "9000", "ETCD_NAME": "from-env"},
    )
    assert args.name == "from-file"
    assert args.heartbeat_interval == 20
    assert args.election_timeout == 1000  # etcd's default, not the environment's
    assert args.snapshot_count == 100_000
    assert args.config_notes == [
        f"{path} is used: --name, --snapshot-count on the command line ignored"
    ]


def test_the_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: via-env\n")
    args = daemon.parse_args([], {"ETCD_CONFIG_FILE": path, "ETCD_NAME": "other"})
    assert args.name == "via-env"


def test_unknown_keys_are_reported_with_their_line(tmp_path: Path, caplog: Any) -> None:
    path = _write(
        tmp_path,
        "name: a\nheartbeat-intervall: 50\npeer-transport-security:\n  cert-fil: x\n",
    )
    args = daemon.parse_args([f"--config-file={path}"], {})
    assert args.config_notes == [
        f"{path}:2: heartbeat-intervall: not an etcd 3.4 setting; ignored",
        f"{path}:4: peer-transport-security.cert-fil: not an etcd 3.4 setting; ignored",
    ]
    with caplog.at_level(logging.WARNING, logger="keel_store"):
        daemon.node_config(args)
    assert "heartbeat-intervall" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a\nheartbeat-interval: fast\n", ":2: heartbeat-interval: expected a whole number"),
        ("snapshot-count: true\n", ":1: snapshot-count: expected a whole number, not True"),
        ("debug: 'yes'\n", ":1: debug: expected true or false, not 'yes'"),
        ("name: [a, b]\n", ":1: name: expected a string"),
        ("log-outputs: [stderr, 3]\n", ":1: log-outputs: expected a list of strings"),
        ("a: b\n  c: d\n", ":2:4: not valid YAML"),
        ("- name\n- a\n", ":1: expected a map of settings"),
        ("peer-transport-security: yes\n", ":1: peer-transport-security: expected a map"),
        (
            "\n\nclient-transport-security:\n  client-cert-auth: 1\n",
            ":4: client-transport-security.client-cert-auth: expected true or false",
        ),
    ],
)
def test_bad_values_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(daemon.FlagError) as caught:
        daemon.parse_args([f"--config-file={path}"], {})
    assert str(caught.value).startswith(path)
    assert message in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(daemon.FlagError, match=r"--config-file: .*nope\.yml: No such file"):
        daemon.parse_args([f"--config-file={tmp_path / 'nope.yml'}"], {})


def test_an_empty_file_leaves_the_defaults(tmp_path: Path) -> None:
    args = daemon.parse_args([f"--config-file={_write(tmp_path, '')}"], {})
    assert args.name == "default"
    assert args.config_notes == [
        f"{tmp_path / 'etcd.conf.yml'}: empty; every setting at its default"
    ]


def test_the_daemon_exits_with_the_error(tmp_path: Path, capsys: Any) -> None:
    path = _write(tmp_path, "election-timeout: soon\n")
    assert daemon.main([f"--config-file={path}"]) == 2
    assert f"{path}:1: election-timeout: expected a whole number" in capsys.readouterr().err
