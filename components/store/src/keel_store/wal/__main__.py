"""``python -m keel_store.wal DATA_DIR``: check a node's storage without changing it.

For an operator deciding what to do with a node that refuses to start: it lists the
snapshot files (valid or damaged), then reads the WAL from the newest valid snapshot as
recovery would, and says whether it ends cleanly, ends in a torn write that recovery
would cut, or is damaged (file and offset). Exit status: 0 usable, 1 damaged, 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys

from keel_store.raft.types import SnapshotMeta

from .fs import OSFileSystem
from .replay import CorruptionError, read_wal
from .snapshots import SnapshotError, SnapshotStore, decode


def main(argv: list[str] | None = None) -> int:
    """Print a report on ``DATA_DIR/snap`` and ``DATA_DIR/wal``; see the module docs."""
    parser = argparse.ArgumentParser(prog="python -m keel_store.wal", description=__doc__)
    parser.add_argument("data_dir", help="the node's data directory (holding wal/ and snap/)")
    parser.add_argument("--wal-dir", help="the WAL's own directory, if the member has one")
    args = parser.parse_args(argv)
    fs = OSFileSystem()
    wal_dir = args.wal_dir or os.path.join(args.data_dir, "wal")
    snap_dir = os.path.join(args.data_dir, "snap")
    if not os.path.isdir(wal_dir):
        print(f"{wal_dir}: no such directory", file=sys.stderr)
        return 2
    chosen: SnapshotMeta | None = None  # the newest valid one, as recovery picks
    if os.path.isdir(snap_dir):
        for name in reversed(SnapshotStore(fs, snap_dir).names()):
            path = os.path.join(snap_dir, name)
            try:
                meta = decode(fs.read(path), path).meta
            except SnapshotError as exc:
                print(f"snapshot  DAMAGED  {exc}")
                continue
            print(f"snapshot  ok       {path}: index {meta.index}, term {meta.term}")
            chosen = chosen or meta
    base = chosen or SnapshotMeta()
    try:
        found = read_wal(fs, wal_dir, base)
    except CorruptionError as exc:
        print(f"wal       DAMAGED  {exc}")
        return 1
    for segment in found.segments:
        print(f"segment   ok       {os.path.join(wal_dir, segment.name)}")
    entries = found.replayer.entries()
    state = found.replayer.hard_state
    print(
        f"wal       ok       from snapshot {base.index}: {len(entries)} entries after it, "
        f"last index {found.replayer.last_index}; term {state.term}, vote {state.vote}, "
        f"commit {state.commit}"
    )
    if found.torn_bytes:
        last = os.path.join(wal_dir, found.segments[-1].name)
        print(f"wal       torn     {last}: {found.torn_bytes} bytes after offset {found.end} "
              "(an unacknowledged write; recovery cuts it)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
