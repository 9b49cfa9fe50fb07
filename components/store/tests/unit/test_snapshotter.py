"""Snapshots built in a forked child: the same bytes as on the loop, the loop keeps going."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

import keel_store.server.node as node_module
from keel_store.mvcc import snapshot
from keel_store.mvcc.commands import Kind
from keel_store.mvcc.etcd_db import etcd_database, etcd_database_pieces
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb
from keel_store.raft.storage import MemoryStorage, SnapshotTemporarilyUnavailableError
from keel_store.raft.types import Snapshot, SnapshotMeta
from keel_store.server import other_services
from keel_store.server.node import StoreNode
from keel_store.server.other_services import MaintenanceService
from keel_store.server.snapshotter import (
    FileLoader,
    SnapshotChildError,
    save_in_child,
    stream_from_child,
    write_in_child,
)
from keel_store.wal import OSFileSystem, SnapshotStore
from keel_store.wal.snapshots import encode

from .conftest import node_configs, until


def _state(keys: int) -> StateMachine:
    sm = StateMachine()
    for i in range(keys):
        sm.put(rpcpb.PutRequest(key=b"k%06d" % i, value=b"v" * 20))
    return sm


async def _loaded(storage: MemoryStorage) -> Snapshot:
    """The snapshot as a leader gets it to send: asked again until its file is read."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return storage.snapshot()
        except SnapshotTemporarilyUnavailableError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)


def test_child_writes_what_save_would() -> None:
    sm = _state(3000)

    async def scenario() -> bytes:
        running = save_in_child(sm)
        return await running.future

    assert asyncio.run(scenario()) == snapshot.save(sm)


def test_a_child_that_keeps_the_bytes_sends_none(tmp_path: Path) -> None:
    """With ``keep`` the child writes the bytes itself (the node: the snapshot file)
    and pipes nothing back: the parent never holds them."""
    sm = _state(3000)
    out = tmp_path / "kept"

    def keep(data: bytes) -> None:
        out.write_bytes(data)

    async def scenario() -> bytes:
        return await save_in_child(sm, keep).future

    assert asyncio.run(scenario()) == b""
    assert out.read_bytes() == snapshot.save(sm)


def test_a_writing_child_streams_the_snapshot_file(tmp_path: Path) -> None:
    """The node's child: the snapshot file from ``save_chunks`` as they come, byte for
    byte the file of the joined bytes, taken at the fork; nothing is piped back."""
    sm = StateMachine()
    for i in range(2500):
        sm.put(rpcpb.PutRequest(key=b"k%06d" % i, value=i.to_bytes(4) * 256))
    expected = snapshot.save(sm)  # 2.6 MB: three chunks
    store = SnapshotStore(OSFileSystem(), str(tmp_path))
    meta = SnapshotMeta(index=9, term=2)
    sizes: list[int] = []

    def write(chunks: Any) -> None:
        def counted() -> Any:
            for chunk in chunks:
                sizes.append(len(chunk))
                yield chunk

        store.write_tmp_chunks(meta, counted())
        with open(tmp_path / "sizes", "w") as out:
            out.write(" ".join(map(str, sizes)))

    async def scenario() -> bytes:
        running = write_in_child(sm, write)
        for i in range(100):  # the parent goes on changing its copy
            sm.put(rpcpb.PutRequest(key=b"later%d" % i, value=b"x"))
        return await running.future

    assert asyncio.run(scenario()) == b""
    path = store.commit_tmp(meta)
    assert Path(path).read_bytes() == encode(Snapshot(meta=meta, data=expected))
    assert store.load() == Snapshot(meta=meta, data=expected)
    sizes = [int(n) for n in (tmp_path / "sizes").read_text().split()]
    assert len(sizes) == 3
    assert all(snapshot.CHUNK <= size < snapshot.CHUNK + 2048 for size in sizes[:-1])


def _policies(sm: StateMachine, tmp_path: Path, **kwargs: Any) -> tuple[list[int], bytes]:
    """The scheduling policy of a node's snapshot child as it took each chunk, and the
    bytes it was given."""
    out = tmp_path / "policies"

    def write(chunks: Any) -> None:  # in the child
        data = []
        with out.open("w") as f:
            for chunk in chunks:
                data.append(chunk)
                f.write(f"{os.sched_getscheduler(0)} ")
        (tmp_path / "data").write_bytes(b"".join(data))

    async def scenario() -> bytes:
        return await write_in_child(sm, write, **kwargs).future

    assert asyncio.run(scenario()) == b""
    return [int(n) for n in out.read_text().split()], (tmp_path / "data").read_bytes()


def test_the_snapshot_child_runs_at_idle_priority(tmp_path: Path) -> None:
    """Nobody waits for a member's snapshot: its child takes the CPU only when nothing
    else wants it. The parent keeps its own priority."""
    sm = _state(40_000)  # 3 chunks
    before = os.sched_getscheduler(0)
    assert before != os.SCHED_IDLE
    policies, data = _policies(sm, tmp_path)
    assert policies == [os.SCHED_IDLE] * 3
    assert data == snapshot.save(sm)
    assert os.sched_getscheduler(0) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="leaving SCHED_IDLE needs RLIMIT_NICE or root")
def test_the_snapshot_child_takes_normal_priority_back_after_a_while(tmp_path: Path) -> None:
    """A machine that is never idle still gets its snapshots: after ``idle_for``
    seconds (checked after each chunk) the child asks for its priority (its
    parent's) back."""
    sm = _state(40_000)
    own = os.sched_getscheduler(0)
    policies, data = _policies(sm, tmp_path, idle_for=0.0)
    assert policies == [os.SCHED_IDLE, own, own]
    assert data == snapshot.save(sm)


def test_a_child_not_allowed_back_stays_idle_and_finishes(tmp_path: Path) -> None:
    """Without RLIMIT_NICE (or root) the switch back fails with EPERM: the child
    stays idle and still writes every chunk."""
    real = os.sched_setscheduler

    def refuse_normal(pid: int, policy: int, param: Any) -> None:
        if policy != os.SCHED_IDLE:
            raise PermissionError(1, "Operation not permitted")
        real(pid, policy, param)

    sm = _state(40_000)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "sched_setscheduler", refuse_normal)
        policies, data = _policies(sm, tmp_path, idle_for=0.0)
    assert policies == [os.SCHED_IDLE] * 3
    assert data == snapshot.save(sm)


def test_child_sees_the_state_at_the_fork_not_later_changes() -> None:
    sm = _state(2000)
    expected = snapshot.save(sm)

    async def scenario() -> bytes:
        running = save_in_child(sm)
        for i in range(500):  # the parent goes on changing its copy
            sm.put(rpcpb.PutRequest(key=b"later%d" % i, value=b"x"))
        return await running.future

    assert asyncio.run(scenario()) == expected
    assert snapshot.save(sm) != expected


def test_a_failing_or_killed_child_is_an_error() -> None:
    def crash(sm: StateMachine, fd: int, keep: object) -> None:
        os._exit(3)

    def hang(sm: StateMachine, fd: int, keep: object) -> None:
        time.sleep(30)
        os._exit(0)

    async def scenario() -> None:
        with pytest.raises(SnapshotChildError):
            await save_in_child(_state(1), None, crash).future
        running = save_in_child(_state(1), None, hang)
        running.kill()
        with pytest.raises(SnapshotChildError):
            await asyncio.wait_for(running.future, 10)

    asyncio.run(scenario())


def test_member_snapshots_in_the_background_and_restarts_from_it(tmp_path: Path) -> None:
    config = node_configs(tmp_path, 1, "--snapshot-count=50", "--unsafe-no-fsync")[0]
    assert config.background_snapshots  # the daemon's choice

    async def scenario() -> None:
        node = StoreNode(config)
        await node.start()
        try:
            for i in range(180):
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%03d" % i, value=b"v"))
            deadline = time.monotonic() + 10
            while node.last_snapshot_index < 150:
                assert time.monotonic() < deadline, node.last_snapshot_index
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"more", value=b"v"))
                await asyncio.sleep(0.01)
            taken = node.last_snapshot_index
            assert node.storage.snapshot_meta.index == taken
            # the child wrote the file, the loop named it
            assert taken in [int(n.split("-")[0], 16) for n in node.disk.snapshots.names()]
            snap_dir = next((tmp_path / "n0").rglob("*.snap")).parent
            assert not list(snap_dir.glob("*.tmp")), list(snap_dir.iterdir())
            # The member holds no copy of it: the leader reads the file when a
            # follower needs it.
            assert node.storage._snapshot.data == b""
            sent = await _loaded(node.storage)
            assert sent.meta.index == taken
            assert snapshot.restore(sent.data).applied_index <= taken
            revision = node.sm.kv.revision
        finally:
            await node.stop()
        again = StoreNode(config)
        await again.start()
        try:
            assert again.last_snapshot_index >= taken  # recovered from that snapshot
            deadline = time.monotonic() + 10  # then the log after it, once re-committed
            while again.sm.kv.revision < revision:
                assert time.monotonic() < deadline, again.sm.kv.revision
                await asyncio.sleep(0.01)
            assert again.sm.kv.revision == revision
            got = again.sm.range(rpcpb.RangeRequest(key=b"k000", range_end=b"k\xff"))
            assert got.count == 180
        finally:
            await again.stop()

    asyncio.run(scenario())


def test_a_failing_child_is_not_forked_again_on_every_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks = []

    def failing(sm: StateMachine, write: Any) -> Any:
        def crash(sm: StateMachine, fd: int, keep: object) -> None:
            os._exit(1)

        forks.append(time.monotonic())
        return save_in_child(sm, write, crash)

    monkeypatch.setattr(node_module, "write_in_child", failing)

    async def scenario() -> None:
        node = StoreNode(node_configs(tmp_path, 1, "--snapshot-count=20", "--unsafe-no-fsync")[0])
        await node.start()
        try:
            for i in range(200):  # 180 Readys past the threshold, within a second or two
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%03d" % i, value=b"v"))
            assert node.last_snapshot_index == 0
        finally:
            await node.stop()

    asyncio.run(scenario())
    assert 1 <= len(forks) <= 2, len(forks)


def test_after_a_snapshot_the_log_is_dropped_a_step_per_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-memory log a snapshot covers goes a step per Ready (all at once held the
    loop for 164-190 ms under check perf l), down to what the snapshot leaves behind."""
    monkeypatch.setattr(node_module, "_COMPACT_STEP", 7)
    config = node_configs(tmp_path, 1, "--snapshot-count=60", "--unsafe-no-fsync")[0]
    config.background_snapshots = False  # the snapshot in the Ready that reaches 60

    async def scenario() -> None:
        node = StoreNode(config)
        await node.start()
        try:
            dropped: list[int] = []
            real_compact = MemoryStorage.compact

            def compact(storage: MemoryStorage, index: int) -> None:
                dropped.append(index - (storage.first_index() - 1))
                real_compact(storage, index)

            monkeypatch.setattr(MemoryStorage, "compact", compact)
            for i in range(140):
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%03d" % i, value=b"v"))
            taken = node.last_snapshot_index
            assert taken >= 120
            # etcd's rule: keep min(5000, snapshot-count) entries behind the snapshot
            assert node.storage.first_index() - 1 == taken - 60
            assert dropped
            assert max(dropped) <= 7
            assert len(dropped) >= (taken - 60) // 7
            assert sum(dropped) == taken - 60
        finally:
            await node.stop()

    asyncio.run(scenario())


def test_a_snapshot_that_cannot_be_named_leaves_the_previous_one_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If naming the child's file fails (a full or failing disk), the member keeps its
    previous snapshot, whose file is there to be sent, not one whose file is not."""
    config = node_configs(tmp_path, 1, "--snapshot-count=50", "--unsafe-no-fsync")[0]

    async def scenario() -> None:
        node = StoreNode(config)
        await node.start()
        try:
            i = 0
            while node.last_snapshot_index < 50:
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%03d" % i, value=b"v"))
                i += 1
                await asyncio.sleep(0.005 if i > 60 else 0)
            first = node.storage.snapshot_meta.index

            def refuse(meta: Any) -> str:
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(node.disk.snapshots, "commit_tmp", refuse)
            deadline = time.monotonic() + 10
            while node._snapshot_retry_at == 0:
                assert time.monotonic() < deadline
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"more", value=b"v"))
                await asyncio.sleep(0.005)
            assert node.storage.snapshot_meta.index == first
            assert snapshot.restore((await _loaded(node.storage)).data).applied_index == first
        finally:
            await node.stop()

    asyncio.run(scenario())


def test_a_snapshot_file_is_read_off_the_loop_and_handed_over_once() -> None:
    """``FileLoader``: the first ask starts the read in a thread and says "not yet"; the
    loop goes on meanwhile; the ask after the read gets the bytes, and the next one
    reads the file again (the bytes are not held between sends)."""
    release = threading.Event()
    reads: list[int] = []

    def read() -> bytes:
        reads.append(threading.get_ident())
        assert release.wait(10)
        return b"snapshot bytes"

    async def scenario() -> None:
        loader = FileLoader(read)
        with pytest.raises(SnapshotTemporarilyUnavailableError):
            loader()
        ticks = 0
        while not reads or ticks < 5:  # the loop runs while the thread reads
            await asyncio.sleep(0.001)
            ticks += 1
        with pytest.raises(SnapshotTemporarilyUnavailableError):
            loader()  # still reading: no second read started
        release.set()
        deadline = time.monotonic() + 10
        while True:
            try:
                data = loader()
                break
            except SnapshotTemporarilyUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.001)
        assert data == b"snapshot bytes"
        assert len(reads) == 1
        assert reads[0] != threading.get_ident()
        with pytest.raises(SnapshotTemporarilyUnavailableError):
            loader()  # handed over: the next send reads again
        await asyncio.sleep(0.05)
        assert len(reads) == 2

    asyncio.run(scenario())


def test_a_failed_snapshot_file_read_raises_where_the_leader_asks() -> None:
    def read() -> bytes:
        raise OSError(5, "Input/output error")

    async def scenario() -> None:
        loader = FileLoader(read)
        with pytest.raises(SnapshotTemporarilyUnavailableError):
            loader()
        await asyncio.sleep(0.05)
        with pytest.raises(OSError, match="Input/output"):
            loader()

    asyncio.run(scenario())


def test_a_failed_read_goes_to_on_failure_and_stays_unavailable() -> None:
    failures: list[Exception] = []

    def read() -> bytes:
        raise OSError(5, "Input/output error")

    async def scenario() -> None:
        loader = FileLoader(read, on_failure=failures.append)
        with pytest.raises(SnapshotTemporarilyUnavailableError, match="being read"):
            loader()
        await asyncio.sleep(0.05)
        with pytest.raises(SnapshotTemporarilyUnavailableError, match="Input/output"):
            loader()
        assert [str(e) for e in failures] == ["[Errno 5] Input/output error"]

    asyncio.run(scenario())


def test_a_damaged_snapshot_file_is_set_aside_and_written_again(tmp_path: Path) -> None:
    """No write since the snapshot: the member writes the same snapshot again under its
    name (the damaged file kept as ``.broken``) and sends that; it does not stop."""
    config = node_configs(tmp_path, 1, "--snapshot-count=50", "--unsafe-no-fsync")[0]

    async def scenario() -> None:
        node = StoreNode(config)
        await node.start()
        try:
            puts = 0
            while node._snapshot_child is None and node.last_snapshot_index == 0:
                # one at a time: no write after the one whose apply forks the child
                key = b"k%03d" % puts
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=key, value=b"v"))
                puts += 1
            await until(lambda: node.storage.snapshot_meta.index > 0)
            taken = node.storage.snapshot_meta.index
            assert node.sm.applied_index == taken  # nothing applied since
            path = next((tmp_path / "n0").rglob("*.snap.broken"), None)
            assert path is None
            (path,) = [p for p in (tmp_path / "n0").rglob("*.snap") if p.name[:16] != "0" * 16]
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
            sent = await _loaded(node.storage)  # asked again until a readable file is there
            assert node.failure is None
            assert sent.meta.index == taken
            restored = snapshot.restore(sent.data)
            assert restored.range(rpcpb.RangeRequest(key=b"k", range_end=b"l")).count == puts
            assert path.with_name(path.name + ".broken").exists()
            assert path.exists()  # the same name, written again
        finally:
            await node.stop()

    asyncio.run(scenario())


def test_a_member_with_its_wal_elsewhere_keeps_max_snapshots(tmp_path: Path) -> None:
    """``--wal-dir``: the WAL lives there and nowhere under the data directory, and a
    restart recovers from it; ``--max-snapshots=3`` keeps three snapshot files (and
    ``--pre-vote=false`` reaches the Raft core)."""
    wal = tmp_path / "fast-disk" / "wal"
    config = node_configs(
        tmp_path, 1, "--snapshot-count=20", "--unsafe-no-fsync", f"--wal-dir={wal}",
        "--max-snapshots=3", "--pre-vote=false",
    )[0]  # fmt: skip

    async def scenario() -> None:
        node = StoreNode(config)
        await node.start()
        try:
            assert node.raft.config.pre_vote is False
            for i in range(150):
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%03d" % i, value=b"v"))
                await until(lambda: node._snapshot_child is None)
            # The WAL's records count from its own directory (the last segment up to
            # its last record).
            tail, used = node.disk.wal.tail
            records = sum(
                min(p.stat().st_size, used) if str(p) == tail else p.stat().st_size
                for p in wal.iterdir()
            )
            member = sum(p.stat().st_size for p in (tmp_path / "n0").rglob("*") if p.is_file())
            assert node.disk_bytes() == member + records
            assert records > 0
            revision = node.sm.kv.revision
        finally:
            await node.stop()
        segments = [p.name for p in wal.iterdir()]
        assert segments
        assert all(name.endswith(".wal") for name in segments), segments
        assert not (tmp_path / "n0" / "member" / "wal").exists()
        assert len(list((tmp_path / "n0" / "member" / "snap").glob("*.snap"))) == 3
        again = StoreNode(config)
        await again.start()
        try:
            await until(lambda: again.sm.kv.revision == revision)  # the log re-committed
            got = again.sm.range(rpcpb.RangeRequest(key=b"k000", range_end=b"k\xff"))
            assert got.count == 150
        finally:
            await again.stop()

    asyncio.run(scenario())


_ORPHAN_SCRIPT = """
import asyncio, sys, time
from keel_store.mvcc.store import StateMachine
from keel_store.server import snapshotter

pid_file = sys.argv[1]

def slow_save(sm, fd, keep):  # in the child: say who it is, then take its time
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(__import__("os").getpid()))
    __import__("os").rename(pid_file + ".tmp", pid_file)
    time.sleep(60)

async def main():
    snapshotter.save_in_child(StateMachine(), save=slow_save)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_child_dies_with_a_member_killed_by_sigkill(tmp_path):
    """``kill -9`` of a member (as the fault tests and the bench do) must not leave its
    snapshot child writing into the data directory the member restarts on."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, str(pid_file)])
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the child never started"
            assert parent.poll() is None, "the parent exited"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert _alive(child)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    deadline = time.monotonic() + 10
    while _alive(child):
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            pytest.fail(f"snapshot child {child} outlived its killed parent")
        time.sleep(0.05)


def test_a_streamed_child_sends_the_state_at_the_fork_in_pieces() -> None:
    """``stream_from_child``: the size first, then the bytes as they are read; what the
    parent changes after the fork is not in them."""
    sm = _state(3000)
    expected = etcd_database(sm)

    async def scenario() -> tuple[int, list[bytes]]:
        opening = asyncio.create_task(stream_from_child(sm, etcd_database_pieces))
        await asyncio.sleep(0)  # forked: the task waits on the pipe
        for i in range(500):
            sm.put(rpcpb.PutRequest(key=b"later%d" % i, value=b"x"))
        stream = await opening
        got: list[bytes] = []
        try:
            while (done := sum(map(len, got))) < stream.size:
                got.append(await stream.read(min(32 * 1024, stream.size - done)))
            await stream.finish()
        finally:
            stream.close()
        return stream.size, got

    size, got = asyncio.run(scenario())
    assert size == len(expected)
    assert b"".join(got) == expected
    assert len(got) == -(-size // (32 * 1024))
    assert etcd_database(sm) != expected


def test_a_streamed_child_that_fails_or_is_killed_is_an_error() -> None:
    def crash(sm: StateMachine) -> bytes:
        os._exit(3)

    def huge(sm: StateMachine) -> bytes:
        return b"x" * (8 << 20)  # more than the pipe and the reader hold

    async def scenario() -> None:
        with pytest.raises(SnapshotChildError, match="exited with status 3"):
            await stream_from_child(_state(1), crash)
        stream = await stream_from_child(_state(1), huge)
        assert await stream.read(5) == b"xxxxx"
        os.kill(stream.pid, signal.SIGKILL)  # stopped half-way

        async def read_all() -> None:
            while True:
                await stream.read(1 << 16)

        with pytest.raises(SnapshotChildError, match="killed by signal 9"):
            await read_all()
        stream.close()

    asyncio.run(scenario())


def test_a_stream_given_up_kills_and_reaps_its_child() -> None:
    def huge(sm: StateMachine) -> bytes:
        return b"x" * (8 << 20)

    async def scenario() -> int:
        stream = await stream_from_child(_state(1), huge)
        await stream.read(10)
        stream.close()  # the client went away: the child waits on a full pipe
        await until(lambda: not Path(f"/proc/{stream.pid}").exists(), 10)
        return stream.pid

    pid = asyncio.run(scenario())
    with pytest.raises(ChildProcessError):  # reaped already
        os.waitpid(pid, os.WNOHANG)


def test_a_member_streams_its_etcd_snapshot_without_holding_its_loop(tmp_path: Path) -> None:
    """``Maintenance.Snapshot`` on a forking member: the loop goes on turning while the
    child lays out 40k keys (taking the rows on the loop held it for all of that), and
    the client gets etcd's messages: the database in 32 KiB parts with the bytes still
    to come, then its SHA-256 alone, no header."""
    config = node_configs(tmp_path, 1, "--unsafe-no-fsync")[0]
    assert config.background_snapshots

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

    async def scenario() -> None:
        node = StoreNode(config)
        await node.start()
        try:
            for i in range(0, 40_000, 100):
                ops = [
                    rpcpb.RequestOp(
                        request_put=rpcpb.PutRequest(key=b"k%06d" % j, value=b"v" * 100)
                    )
                    for j in range(i, i + 100)
                ]
                await node.propose(Kind.TXN, rpcpb.TxnRequest(success=ops))
            started = time.perf_counter()
            expected = etcd_database(node.sm)
            inline = time.perf_counter() - started  # what the loop was held for before
            stalls: list[float] = []

            async def watch_the_loop() -> None:
                while True:
                    before = time.perf_counter()
                    await asyncio.sleep(0)
                    stalls.append(time.perf_counter() - before)

            watcher = asyncio.create_task(watch_the_loop())
            await asyncio.sleep(0)
            replies = [r async for r in MaintenanceService(node).Snapshot(None, Context())]
            await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"after", value=b"v"))
            watcher.cancel()
        finally:
            await node.stop()
        blob = b"".join(r.blob for r in replies[:-1])
        assert blob == expected
        assert replies[-1].blob == hashlib.sha256(blob).digest()
        assert replies[-1].remaining_bytes == 0
        assert [r.remaining_bytes for r in replies[:-1]] == [
            len(blob) - min(len(blob), (i + 1) * 32 * 1024) for i in range(len(replies) - 1)
        ]
        assert not any(r.HasField("header") for r in replies)
        assert max(stalls) < inline / 2, (max(stalls), inline)

    asyncio.run(scenario())


def test_a_client_snapshot_whose_child_fails_ends_the_call_with_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd sends a failed snapshot's error as code Unknown; the member goes on."""

    def crash(sm: StateMachine) -> bytes:
        os._exit(3)

    monkeypatch.setattr(other_services, "etcd_database_pieces", crash)

    class Aborted(Exception):
        pass

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise Aborted(code, details)

    async def scenario() -> tuple[Any, ...]:
        node = StoreNode(node_configs(tmp_path, 1, "--unsafe-no-fsync")[0])
        await node.start()
        try:
            await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k", value=b"v"))
            with pytest.raises(Aborted) as failed:
                _ = [
                    r
                    async for r in other_services.MaintenanceService(node).Snapshot(None, Context())
                ]
            await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k", value=b"again"))
            return failed.value.args
        finally:
            await node.stop()

    code, details = asyncio.run(scenario())
    assert code == grpc.StatusCode.UNKNOWN
    assert "exited with status 3" in details
