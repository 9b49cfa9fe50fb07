"""WAL throughput on this disk: one fsync per record vs group commit, against bare fdatasync.

The peer is the floor any durable log pays: a plain Python loop of ``os.write`` plus
``os.fdatasync`` per record. Against it, in the same run and directory:

- ``wal, fsync per record``: ``WriteAheadLog.save([entry])`` per record;
- ``wal, batches of N``: ``append`` N entries, then one ``sync``;
- ``group commit, C callers``: C threads each waiting for its own record to be durable
  through :class:`GroupCommitter`, which puts every waiting caller under one fsync.

Run: ``python benchmarks/run.py wal`` (``--seconds=S`` per case, default 1;
``--rounds=R``, default 3, interleaved, medians reported).
Timings on a shared machine are noisy; compare ratios, not absolutes.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from keel_store.raft.types import Entry, HardState
from keel_store.wal import GroupCommitter, OSFileSystem, WriteAheadLog
from keel_store.wal.records import encode_entry

PAYLOAD = b"x" * 100
"""Roughly an etcd put of a short key and value."""


def _timed(seconds: float, step: Callable[[], int]) -> tuple[int, float]:
    """Run ``step`` (returning records done) until ``seconds`` pass; (records, elapsed)."""
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += step()
    return done, elapsed


def bare_fdatasync(directory: str, seconds: float) -> tuple[int, int, float]:
    """The peer: write one record, fdatasync, repeat."""
    record = encode_entry(Entry(1, 1, data=PAYLOAD))
    fd = os.open(os.path.join(directory, "bare"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:

        def step() -> int:
            os.write(fd, record)
            os.fdatasync(fd)
            return 1

        records, elapsed = _timed(seconds, step)
    finally:
        os.close(fd)
    return records, records, elapsed


def wal_batches(directory: str, seconds: float, batch: int) -> tuple[int, int, float]:
    """``batch`` entries appended, then one sync (batch=1: fsync per record)."""
    wal, _ = WriteAheadLog.open(OSFileSystem(), directory)
    index = [0]

    def step() -> int:
        first = index[0] + 1
        index[0] += batch
        wal.append([Entry(1, i, data=PAYLOAD) for i in range(first, first + batch)])
        wal.sync()
        return batch

    records, elapsed = _timed(seconds, step)
    syncs = wal.syncs
    wal.close()
    return records, syncs, elapsed


def group_commit(directory: str, seconds: float, callers: int) -> tuple[int, int, float]:
    """``callers`` threads, each proposing one entry at a time and waiting for it."""
    wal, _ = WriteAheadLog.open(OSFileSystem(), directory)
    committer = GroupCommitter(wal)
    order = threading.Lock()
    next_index = [1]
    stop = time.perf_counter() + seconds

    def client() -> None:
        while time.perf_counter() < stop:
            with order:
                index = next_index[0]
                next_index[0] += 1
                future = committer.submit([Entry(1, index, data=PAYLOAD)], HardState(1, 0, 0))
            future.result()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    syncs = wal.syncs
    committer.close()
    return committer.jobs, syncs, elapsed


def main(argv: list[str]) -> int:
    """Measure and print a table with ratios to the bare-fdatasync floor."""
    seconds, rounds = 1.0, 3
    for arg in argv:
        if arg.startswith("--seconds="):
            seconds = float(arg.split("=", 1)[1])
        elif arg.startswith("--rounds="):
            rounds = int(arg.split("=", 1)[1])
    console = Console(width=110)
    root = Path(__file__).resolve().parent.parent / ".cache"
    root.mkdir(exist_ok=True)
    base = tempfile.mkdtemp(prefix="bench-wal-", dir=root)
    cases: list[tuple[str, Callable[[str], tuple[int, int, float]]]] = [
        ("bare write+fdatasync (peer)", lambda d: bare_fdatasync(d, seconds)),
        ("wal, fsync per record", lambda d: wal_batches(d, seconds, 1)),
        ("wal, batches of 64", lambda d: wal_batches(d, seconds, 64)),
        ("group commit, 16 callers", lambda d: group_commit(d, seconds, 16)),
        ("group commit, 64 callers", lambda d: group_commit(d, seconds, 64)),
    ]
    # Rounds interleave the cases so that the load of a shared machine hits them alike;
    # each figure is the median over the rounds.
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
    try:
        with console.status("measuring") as status:
            for round_number in range(rounds):
                for number, (name, run) in enumerate(cases):
                    status.update(f"round {round_number + 1}/{rounds}: {name} ({seconds:g}s)")
                    directory = os.path.join(base, f"{round_number}-{number}")
                    os.mkdir(directory)
                    records, syncs, elapsed = run(directory)
                    samples[name].append((records / elapsed, syncs / elapsed))
                    shutil.rmtree(directory)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if not any(root.iterdir()):
            root.rmdir()
    results = [
        (name, statistics.median(r for r, _ in runs), statistics.median(s for _, s in runs))
        for name, runs in samples.items()
    ]
    floor_records, floor_syncs = results[0][1], results[0][2]
    table = Table(title=f"WAL under {root}: median of {rounds} rounds of {seconds:g}s per case")
    for column in ("case", "records/s", "fsyncs/s", "records/s vs peer", "fsyncs/s vs peer"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for name, records_per_s, syncs_per_s in results:
        table.add_row(
            name, f"{records_per_s:,.0f}", f"{syncs_per_s:,.0f}",
            f"{records_per_s / floor_records:.2f}x", f"{syncs_per_s / floor_syncs:.2f}x",
        )  # fmt: skip
    console.print(table)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
