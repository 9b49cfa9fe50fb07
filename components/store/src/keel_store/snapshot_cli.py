"""``keel-store snapshot status|restore``: etcdctl's snapshot commands, for keel-store.

``status FILE [-w simple|json|table]`` prints what ``etcdctl snapshot status`` prints
(hash, revision, total keys, total size). ``restore FILE --data-dir ... --name ...
--initial-cluster ... --initial-cluster-token ... --initial-advertise-peer-urls ...``
turns a snapshot saved from etcd (or keel-store) into a keel-store data directory, as
``etcdctl snapshot restore`` makes one for etcd. Bad input exits 1 with a message that
names the file and what is wrong, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from keel_store.etcd_snapshot import SnapshotFileError, Status, restore, status
from keel_store.server.members import Cluster, ClusterConfigError, parse_initial_cluster


def human_bytes(size: int) -> str:
    """go-humanize's ``Bytes`` (SI units), as etcdctl prints sizes: ``618 kB``."""
    if size < 10:
        return f"{size} B"
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    exp = math.floor(math.log(size) / math.log(1000))
    value = math.floor(size / 1000**exp * 10 + 0.5) / 10
    return f"{value:.1f} {units[exp]}" if value < 10 else f"{value:.0f} {units[exp]}"


def _print_status(st: Status, fmt: str) -> None:
    row = [f"{st.hash:x}", str(st.revision), str(st.total_key), human_bytes(st.total_size)]
    if fmt == "json":
        print(json.dumps(st.to_json(), separators=(",", ":")))
    elif fmt == "table":
        head = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]
        widths = [max(len(h), len(c)) + 2 for h, c in zip(head, row, strict=True)]
        line = "+" + "+".join("-" * w for w in widths) + "+"
        print(line)
        print("|" + "|".join(h.center(w) for h, w in zip(head, widths, strict=True)) + "|")
        print(line)
        print("|" + "|".join(c.rjust(w - 1) + " " for c, w in zip(row, widths, strict=True)) + "|")
        print(line)
    else:
        print(", ".join(row))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel-store snapshot", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="hash, revision, total keys and size of a snapshot")
    st.add_argument("file")
    st.add_argument("-w", "--write-out", default="simple", choices=["simple", "json", "table"])
    rs = sub.add_parser("restore", help="make a keel-store data directory from a snapshot")
    rs.add_argument("file")
    rs.add_argument("--data-dir", default="", help="data directory to create (${name}.etcd)")
    rs.add_argument(
        "--wal-dir", default="", help="the WAL's own directory to create (as --wal-dir)"
    )
    rs.add_argument("--name", default="default", help="this member's name")
    rs.add_argument("--initial-cluster", default="", help="name=peer-url,... of the new cluster")
    rs.add_argument("--initial-cluster-token", default="etcd-cluster")
    rs.add_argument("--initial-advertise-peer-urls", default="http://localhost:2380")
    rs.add_argument("--skip-hash-check", action="store_true", help="file has no sha256")
    return parser


def _cluster(args: argparse.Namespace) -> Cluster:
    peer_urls = [u.strip() for u in args.initial_advertise_peer_urls.split(",") if u.strip()]
    spec = args.initial_cluster or f"{args.name}={','.join(peer_urls)}"
    cluster = Cluster(parse_initial_cluster(spec), args.initial_cluster_token)
    me = cluster.by_name(args.name)
    if sorted(me.peer_urls) != sorted(peer_urls):
        raise ClusterConfigError(
            f"--initial-cluster has {args.name}={','.join(me.peer_urls)} but "
            f"--initial-advertise-peer-urls is {','.join(peer_urls)}"
        )
    return cluster


def main(argv: list[str]) -> int:
    """Run one snapshot command; 0 on success, 1 on a bad file, 2 on bad flags."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "status":
            _print_status(status(Path(args.file)), args.write_out)
            return 0
        cluster = _cluster(args)
        data_dir = Path(args.data_dir or f"{args.name}.etcd")
        sm = restore(
            Path(args.file),
            data_dir,
            args.name,
            cluster,
            skip_hash_check=args.skip_hash_check,
            wal_dir=Path(args.wal_dir) if args.wal_dir else None,
        )
    except ClusterConfigError as exc:
        print(f"keel-store snapshot: {exc}", file=sys.stderr)
        return 2
    except (SnapshotFileError, OSError) as exc:
        print(f"keel-store snapshot: {exc}", file=sys.stderr)
        return 1
    print(
        f"Restored {args.file} to {data_dir} as member {args.name} "
        f"(revision {sm.kv.revision}, compacted {sm.kv.compact_revision}, "
        f"{len(sm.leases)} leases)"
    )
    return 0
