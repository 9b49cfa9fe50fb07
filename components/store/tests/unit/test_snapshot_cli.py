"""``keel-store snapshot status|restore`` without servers: output, flags, bad files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from keel_store import daemon
from keel_store.bbolt import write_db
from keel_store.etcd_snapshot import state_machine
from keel_store.mvcc.etcd_db import to_buckets
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb
from keel_store.snapshot_cli import human_bytes
from keel_store.wal import NodeStorage, OSFileSystem


def _snapshot(path: Path) -> StateMachine:
    sm = StateMachine()
    for i in range(20):
        sm.put(rpcpb.PutRequest(key=b"k%d" % i, value=b"v"))
    db = write_db(to_buckets(sm))
    path.write_bytes(db + hashlib.sha256(db).digest())
    return sm


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (9, "9 B"), (999, "999 B"), (1000, "1.0 kB"), (29_000, "29 kB"),
     (618_496, "618 kB"), (82_854_982, "83 MB")],
)  # fmt: skip
def test_sizes_print_as_go_humanize(size: int, text: str) -> None:
    assert human_bytes(size) == text


def test_status_simple_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _snapshot(tmp_path / "s.db")
    assert daemon.main(["snapshot", "status", str(tmp_path / "s.db")]) == 0
    simple = capsys.readouterr().out.strip().split(", ")
    # + consistent_index, clusterVersion, authRevision (no authEnabled: never toggled)
    assert simple[1:3] == ["21", str(20 + 3)]
    assert daemon.main(["snapshot", "status", str(tmp_path / "s.db"), "-w", "json"]) == 0
    assert '"revision":21' in capsys.readouterr().out


def test_restore_makes_a_member_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sm = _snapshot(tmp_path / "s.db")
    target = tmp_path / "m1.etcd"
    argv = ["snapshot", "restore", str(tmp_path / "s.db"), "--name=m1",
            "--initial-cluster=m0=http://127.0.0.1:1,m1=http://127.0.0.1:2",
            "--initial-advertise-peer-urls=http://127.0.0.1:2", f"--data-dir={target}"]  # fmt: skip
    assert daemon.main(argv) == 0
    assert "revision 21" in capsys.readouterr().out
    storage, restart = NodeStorage.open(OSFileSystem(), str(target / "member"))
    storage.close()
    assert restart.snapshot is not None
    assert len(restart.snapshot.meta.conf.voters) == 2
    assert state_machine(tmp_path / "s.db").kv.revision == sm.kv.revision
    assert daemon.main(argv) == 1  # exists now
    assert "exists" in capsys.readouterr().err


def test_peer_urls_must_match_the_initial_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _snapshot(tmp_path / "s.db")
    argv = ["snapshot", "restore", str(tmp_path / "s.db"), "--name=m0",
            "--initial-cluster=m0=http://127.0.0.1:1",
            "--initial-advertise-peer-urls=http://127.0.0.1:9",
            f"--data-dir={tmp_path / 'd'}"]  # fmt: skip
    assert daemon.main(argv) == 2
    assert "--initial-advertise-peer-urls" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_restore_puts_the_wal_in_its_own_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--wal-dir`` as etcdctl's: the member then starts with the same --wal-dir."""
    _snapshot(tmp_path / "s.db")
    target, wal = tmp_path / "data", tmp_path / "fast" / "wal"
    argv = ["snapshot", "restore", str(tmp_path / "s.db"), f"--data-dir={target}",
            f"--wal-dir={wal}"]  # fmt: skip
    assert daemon.main(argv) == 0
    assert sorted(p.suffix for p in wal.iterdir()) == [".wal"]
    assert not (target / "member" / "wal").exists()
    storage, restart = NodeStorage.open(OSFileSystem(), str(target / "member"), wal_dir=str(wal))
    storage.close()
    assert restart.snapshot is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # An existing WAL directory is refused before anything is written.
    again = ["snapshot", "restore", str(tmp_path / "s.db"), f"--data-dir={tmp_path / 'd2'}",
             f"--wal-dir={wal}"]  # fmt: skip
    assert daemon.main(again) == 1
    assert "wal-dir" in capsys.readouterr().err
    assert not (tmp_path / "d2").exists()
