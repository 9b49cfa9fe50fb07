"""Image store: ``ImageStore.load`` of a gzip OCI layout vs GNU tar unpacking the same layers.

keel's load copies every blob into the store verifying its sha256, unpacks each layer into its
own directory through O_NOFOLLOW directory descriptors, turns whiteouts into overlay form and
checks each layer's diff_id, then syncs the filesystem. The peer, ``tar -xzf`` + ``sync -f``
per layer, does only the unpacking (no digests, no whiteouts); keel's unpacker alone (same
blobs, no store) is timed too. Also printed: what sharing layers saves over one flattened tree
per image, for three images on one base, and the time to mount the layers as an overlay.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from keel_supervisor.images import ImageStore
from keel_supervisor.images.blobs import sync_filesystem
from keel_supervisor.images.layer import unpack_layer
from keel_supervisor.images.testing import (
    busybox_layer,
    directory,
    file,
    layer_tar,
    whiteout,
    write_oci_layout,
)


def _files_layer(seed: int, count: int) -> bytes:
    rng = random.Random(seed)
    entries = [directory("usr"), directory("usr/share")]
    for i in range(count):
        size = rng.choice((200, 2_000, 20_000, 200_000))
        entries.append(file(f"usr/share/f{seed}-{i // 100}/{i}", rng.randbytes(size)))
    return layer_tar(entries)


def _du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def _best(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str]) -> int:
    """Print keel/tar unpack times, their ratio, and the disk saved by shared layers."""
    runs = 1 if "--quick" in argv else 3
    work = Path(tempfile.mkdtemp(prefix="keel-bench-images-"))
    try:
        base = busybox_layer()
        middle = _files_layer(1, 600)
        tops = [
            layer_tar([whiteout("bin/ls"), file(f"app{n}", os.urandom(4096))]) for n in range(3)
        ]
        layouts = []
        for n, top in enumerate(tops):
            layouts.append(work / f"layout{n}")
            write_oci_layout(layouts[-1], [base, middle, top], ref_name=f"v{n}")
        layer_bytes = len(base) + len(middle) + len(tops[0])
        print(f"image: 3 layers, {layer_bytes / 1e6:.1f} MB uncompressed, gzip blobs")

        counter = iter(range(1000))

        def keel_load() -> None:
            ImageStore(work / f"store{next(counter)}").load(layouts[0])

        def tar_unpack() -> None:
            n = next(counter)
            for blob in sorted((layouts[0] / "blobs/sha256").iterdir()):
                if blob.stat().st_size < 4096:
                    continue  # config, manifest
                target = work / f"tar{n}" / blob.name
                target.mkdir(parents=True)
                subprocess.run(
                    ["tar", "-xzf", str(blob), "-C", str(target)], check=True, capture_output=True
                )
                # keel makes each layer durable (syncfs) before it becomes visible: same here
                subprocess.run(["sync", "-f", str(target)], check=True)

        def keel_unpack() -> None:
            n = next(counter)
            for blob in sorted((layouts[0] / "blobs/sha256").iterdir()):
                if blob.stat().st_size < 4096:
                    continue
                target = work / f"unpack{n}" / blob.name
                target.parent.mkdir(exist_ok=True)
                with blob.open("rb") as stream:
                    unpack_layer(stream, target, source=blob.name)
                sync_filesystem(target)

        t_keel = _best(keel_load, runs)
        t_unpack = _best(keel_unpack, runs)
        t_tar = _best(tar_unpack, runs)
        print(f"keel load (copy+verify+unpack) {t_keel * 1000:6.0f} ms")
        print(f"keel unpack only               {t_unpack * 1000:6.0f} ms")
        print(f"tar -xzf                       {t_tar * 1000:6.0f} ms   (all sync each layer)")
        print(f"ratio load/tar {t_keel / t_tar:.2f}x   unpack/tar {t_unpack / t_tar:.2f}x")

        shared = ImageStore(work / "shared")
        for layout in layouts:
            shared.load(layout)
        shared_layers = _du(shared.layers)
        flat = 0
        for n in range(3):
            target = work / f"flat{n}"
            for d in shared.get(f"localhost/layout{n}:v{n}").layer_dirs():
                subprocess.run(["cp", "-a", f"{d}/.", str(target)], check=True)
            flat += _du(target)
        print(
            f"disk for 3 images on one base: per-layer dirs {shared_layers / 1e6:.1f} MB, "
            f"flattened trees {flat / 1e6:.1f} MB (ratio {flat / shared_layers:.2f}x)"
        )

        if os.geteuid() == 0:
            merged = work / "merged"
            merged.mkdir()
            lower = ":".join(
                str(d) for d in reversed(shared.get("localhost/layout0:v0").layer_dirs())
            )

            def mount_cycle() -> None:
                subprocess.run(
                    ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", str(merged)],
                    check=True,
                )
                subprocess.run(["umount", str(merged)], check=True)

            t_mount = _best(mount_cycle, runs)
            print(f"overlay mount+umount of 3 layers: {t_mount * 1000:.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0
