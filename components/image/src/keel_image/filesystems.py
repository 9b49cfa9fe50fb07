"""The read-only /usr filesystem with its dm-verity hash tree, and the ROOT filesystem.

Both are made from directories (``mkfs.erofs``, ``mksquashfs``, ``mkfs.ext4 -d``), with
no mount and no loop device, and with fixed UUIDs and timestamps so that equal trees
give equal bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from keel_image import tools
from keel_image.errors import BuildError

BLOCK = 4096
MIB = 1 << 20


@dataclass(frozen=True)
class UsrImage:
    """USR-A's content: filesystem, then (from ``data_blocks``) the verity hash tree."""

    path: Path
    data_blocks: int
    root_hash: str
    salt: str
    fs_bytes: int

    @property
    def kernel_args(self) -> list[str]:
        """What the initramfs needs to open this /usr through dm-verity."""
        return [f"keel.usrhash={self.root_hash}", f"keel.verity={self.data_blocks},{self.salt}"]


def make_usr(
    tree: Path,
    dest: Path,
    *,
    fstype: str,
    compression: str,
    epoch: int,
    seed: str,
    partition_mib: int,
    stage: str,
) -> UsrImage:
    """Make ``dest``: /usr of ``tree`` as erofs or squashfs, plus its hash tree."""
    fs = dest.with_suffix(".fs")
    usr = tree / "usr"
    if fstype == "erofs":
        tools.require("mkfs.erofs", stage=stage)
        comp = [] if compression in ("", "none") else [f"-z{compression}"]
        fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"keel:{seed}:usr"))
        tools.run(
            ["mkfs.erofs", *comp, f"-T{epoch}", f"-U{fs_uuid}", str(fs), str(usr)],
            stage=stage,
            hint="erofs-utils 1.5 knows the compressors lz4 and lz4hc",
        )
    elif fstype == "squashfs":
        tools.require("mksquashfs", stage=stage)
        algo, _, level = compression.partition("-")
        opts = ["-comp", algo or "zstd"] + (["-Xcompression-level", level] if level else [])
        tools.run(
            [
                "mksquashfs",
                str(usr),
                str(fs),
                *opts,
                "-noappend",
                "-no-progress",
                "-quiet",
                "-mkfs-time",
                str(epoch),
                "-all-time",
                str(epoch),
                "-processors",
                "2",
            ],
            stage=stage,
        )
    else:
        raise BuildError(stage, f"unknown /usr filesystem {fstype!r}", "use erofs or squashfs")
    size = fs.stat().st_size
    padded = -(-size // BLOCK) * BLOCK
    with fs.open("r+b") as f:
        f.truncate(padded)
    data_blocks = padded // BLOCK
    # The tree is about 1/128 of the data (32-byte hashes in 4 KiB blocks), plus upper levels.
    hash_estimate = padded // 127 + 8 * BLOCK
    if padded + hash_estimate > partition_mib * MIB:
        need = -(-(padded + hash_estimate) // MIB)
        raise BuildError(
            stage,
            f"/usr needs {need} MiB ({padded // MIB} MiB {fstype} + hash tree) but USR-A has "
            f"{partition_mib} MiB",
            f"set partitions.usr to at least {need} in the image definition, or drop packages",
        )
    salt = uuid.uuid5(uuid.NAMESPACE_URL, f"keel:{seed}:verity-salt").hex * 2
    tools.require("veritysetup", stage=stage)
    out = tools.run(
        [
            "veritysetup",
            "format",
            "--no-superblock",
            "--hash=sha256",
            f"--data-block-size={BLOCK}",
            f"--hash-block-size={BLOCK}",
            f"--data-blocks={data_blocks}",
            f"--hash-offset={padded}",
            f"--salt={salt}",
            str(fs),
            str(fs),
        ],
        stage=stage,
    )
    m = re.search(r"Root hash:\s*([0-9a-f]{64})", out)
    if not m:
        raise BuildError(stage, f"veritysetup printed no root hash:\n{out}")
    os.replace(fs, dest)
    return UsrImage(dest, data_blocks, m.group(1), salt, padded)


def make_root(tree: Path, dest: Path, *, size_mib: int, epoch: int, seed: str, stage: str) -> None:
    """Make the ext4 ROOT filesystem from ``tree`` minus /usr's content."""
    staging = dest.parent / "root-tree"
    os.mkdir(staging)
    for entry in sorted(tree.iterdir()):
        if entry.name == "usr":
            (staging / "usr").mkdir()
            continue
        os.link(
            entry, staging / entry.name
        ) if entry.is_file() and not entry.is_symlink() else tools.run(
            ["cp", "-a", "--link", str(entry), str(staging)], stage=stage
        )
    # /etc as the initramfs would copy it on first boot (from /usr/share/factory/etc, with
    # the marker it leaves): done here, the first boot skips the copy (0.3-0.9 s of reading
    # /usr through verity under emulation). A ROOT without the marker (a factory reset)
    # still gets its /etc from /usr at boot.
    factory = tree / "usr/share/factory/etc"
    if factory.is_dir():
        if any((staging / "etc").iterdir()):
            raise BuildError(stage, "/etc of the tree is not empty after moving it to /usr")
        (staging / "etc").rmdir()
        tools.run(["cp", "-a", str(factory), str(staging / "etc")], stage=stage)
        (staging / "etc/.keel-factory").touch()
    fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"keel:{seed}:root"))
    hash_seed = str(uuid.uuid5(uuid.NAMESPACE_URL, f"keel:{seed}:root-hash"))
    tools.require("mkfs.ext4", stage=stage)
    tools.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "ROOT",
            "-U",
            fs_uuid,
            "-E",
            f"hash_seed={hash_seed},root_owner=0:0",
            "-O",
            "^metadata_csum_seed",
            "-d",
            str(staging),
            str(dest),
            f"{size_mib}M",
        ],
        stage=stage,
        env={"E2FSPROGS_FAKE_TIME": str(epoch)},
        hint="if the tree does not fit, raise partitions.root in the image definition",
    )
    _clamp_inode_times(dest, staging, epoch, stage)
    shutil.rmtree(staging)


def _clamp_inode_times(image: Path, tree: Path, epoch: int, stage: str) -> None:
    """Set every inode's times to ``epoch`` with debugfs.

    ``mkfs.ext4 -d`` copies atime and ctime from the source files, and ctime cannot be set
    on the host, so without this two builds of the same tree differ.
    """
    paths = ["/", *sorted("/" + str(p.relative_to(tree)) for p in tree.rglob("*"))]
    lines = []
    for path in paths:
        if '"' in path:
            raise BuildError(stage, f"cannot handle a double quote in ROOT path {path!r}")
        for field in ("atime", "ctime", "mtime", "crtime"):
            lines.append(f'set_inode_field "{path}" {field} @{epoch}')
    script = image.parent / "root-times.debugfs"
    script.write_text("\n".join(lines) + "\n")
    tools.run(
        ["debugfs", "-w", "-f", script, image],
        stage=stage,
        env={"E2FSPROGS_FAKE_TIME": str(epoch)},
    )
    script.unlink()
