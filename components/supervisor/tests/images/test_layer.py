"""Layer unpacking: whiteouts in overlay form, attributes, links, and refusing escapes."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from keel_supervisor.images.errors import ArchiveError, DigestMismatch, UnsafeLayer
from keel_supervisor.images.layer import unpack_layer
from keel_supervisor.images.testing import (
    chardev,
    compress,
    directory,
    file,
    hardlink,
    layer_tar,
    opaque,
    symlink,
    whiteout,
)

ROOT = os.geteuid() == 0


def unpack(tmp_path: Path, entries, **kw):
    target = tmp_path / "layer"
    return target, unpack_layer(io.BytesIO(layer_tar(entries)), target, source="test.tar", **kw)


def test_files_dirs_modes_owners_and_mtimes(tmp_path):
    root, stats = unpack(
        tmp_path,
        [
            directory("etc", 0o750, uid=0, gid=5),
            file("etc/shadow", b"secret", 0o4640, uid=7, gid=8),
            directory("tmp", 0o1777),
            file("usr/bin/tool", b"x" * 5000, 0o755),  # parents created implicitly
        ],
    )
    assert (root / "etc/shadow").read_bytes() == b"secret"
    st = (root / "etc/shadow").lstat()
    assert stat.S_IMODE(st.st_mode) == 0o4640  # setuid survives (chmod after chown)
    assert stat.S_IMODE((root / "tmp").lstat().st_mode) == 0o1777
    assert stat.S_IMODE((root / "etc").lstat().st_mode) == 0o750
    if ROOT:
        assert (st.st_uid, st.st_gid) == (7, 8)
        assert (root / "etc").lstat().st_gid == 5
    assert st.st_mtime == 1_700_000_000
    assert (root / "etc").lstat().st_mtime == 1_700_000_000  # set after its children
    assert stats.files == 2
    assert stats.size == 5006


def test_symlinks_kept_verbatim_and_hardlinks_share_inode(tmp_path):
    root, _ = unpack(
        tmp_path,
        [
            file("bin/busybox", b"bb", 0o755),
            symlink("bin/sh", "busybox"),
            symlink("etc-link", "/etc"),  # absolute target: stored, never followed
            hardlink("bin/ash", "bin/busybox"),
        ],
    )
    assert os.readlink(root / "bin/sh") == "busybox"
    assert os.readlink(root / "etc-link") == "/etc"
    assert (root / "bin/ash").stat().st_ino == (root / "bin/busybox").stat().st_ino


def test_whiteout_becomes_overlay_char_device(tmp_path):
    root, stats = unpack(tmp_path, [directory("bin"), whiteout("bin/echo")])
    st = (root / "bin/echo").lstat()
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(0, 0)
    assert not (root / "bin/.wh.echo").exists()
    assert stats.whiteouts == 1


def test_whiteout_does_not_hide_entry_of_same_layer(tmp_path):
    root, _ = unpack(tmp_path, [file("a", b"kept"), whiteout("a")])
    assert (root / "a").read_bytes() == b"kept"


def test_opaque_directory_gets_overlay_xattr(tmp_path):
    root, stats = unpack(tmp_path, [directory("var"), opaque("var/cache"), file("var/cache/n")])
    assert os.getxattr(root / "var/cache", "trusted.overlay.opaque") == b"y"
    assert not (root / "var/cache/.wh..wh..opq").exists()
    assert (root / "var/cache/n").exists()
    assert stats.opaque_dirs == 1


def test_xattrs_applied_and_overlay_xattrs_from_archive_refused(tmp_path):
    root, stats = unpack(
        tmp_path,
        [
            file("ping", b"p", 0o755, xattrs={"user.keel": b"v1"}),
            directory("d", xattrs={"trusted.overlay.opaque": b"y"}),
        ],
    )
    assert os.getxattr(root / "ping", "user.keel") == b"v1"
    assert "trusted.overlay.opaque" not in os.listxattr(root / "d")
    assert stats.skipped_xattrs == ["d:trusted.overlay.opaque"]


@pytest.mark.skipif(not ROOT, reason="device nodes need root")
def test_device_nodes_created_as_root(tmp_path):
    root, _ = unpack(tmp_path, [directory("dev"), chardev("dev/null", 1, 3)])
    st = (root / "dev/null").lstat()
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666


def test_later_entry_replaces_earlier_one(tmp_path):
    root, _ = unpack(tmp_path, [directory("x"), file("x/y"), file("x", b"now a file")])
    assert (root / "x").read_bytes() == b"now a file"


@pytest.mark.parametrize(
    ("entries", "member", "why"),
    [
        ([file("../escape", b"x")], "../escape", "'..'"),
        ([file("a/../../escape", b"x")], "a/../../escape", "'..'"),
        ([file("/etc/evil", b"x")], "/etc/evil", "absolute"),
        ([symlink("link", "/"), file("link/evil", b"x")], "link/evil", "symlink"),
        ([symlink("link", "../.."), directory("link/d")], "link/d", "symlink"),
        (
            [directory("d"), file("d/x"), symlink("d", "/tmp"), file("d/keel-evil", b"x")],
            "d/keel-evil",
            "symlink",
        ),
        ([hardlink("h", "../../etc/passwd")], "h", "'..'"),
        ([hardlink("h", "/etc/passwd")], "h", "absolute"),
    ],
)
def test_escapes_are_refused_naming_archive_and_member(tmp_path, entries, member, why):
    outside = tmp_path / "escape"
    with pytest.raises(UnsafeLayer) as err:
        unpack(tmp_path, entries)
    assert "test.tar" in str(err.value)
    assert repr(member) in str(err.value)
    assert why in str(err.value)
    assert not outside.exists()
    assert not Path("/etc/evil").exists()
    assert not Path("/tmp/keel-evil").exists()


def test_hardlink_through_symlink_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("host file")
    with pytest.raises(UnsafeLayer, match="symlink"):
        unpack(tmp_path, [symlink("up", str(tmp_path)), hardlink("stolen", "up/secret")])
    assert secret.stat().st_nlink == 1


def test_hardlink_to_missing_target_is_an_error(tmp_path):
    with pytest.raises(ArchiveError, match="not in this layer"):
        unpack(tmp_path, [hardlink("h", "nope")])


def test_invalid_whiteout_is_an_error(tmp_path):
    with pytest.raises(ArchiveError, match="not a valid whiteout"):
        unpack(tmp_path, [file("dir/.wh.", b"")])


@pytest.mark.parametrize("how", [None, "gzip", "zstd"])
def test_compression_detected_and_diff_id_verified(tmp_path, how):
    tar = layer_tar([file("hello", b"hi")])
    blob, _ = compress(tar, how)
    from keel_supervisor.images.blobs import digest_bytes

    stats = unpack_layer(
        io.BytesIO(blob), tmp_path / "ok", source="l", expected_diff_id=digest_bytes(tar)
    )
    assert stats.diff_id == digest_bytes(tar)
    with pytest.raises(DigestMismatch, match="diff_id"):
        unpack_layer(
            io.BytesIO(blob), tmp_path / "bad", source="l", expected_diff_id="sha256:" + "0" * 64
        )


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_truncated_layer_is_an_archive_error(tmp_path, how):
    blob, _ = compress(layer_tar([file("big", os.urandom(100_000))]), how)
    with pytest.raises(ArchiveError, match=r"cut\.tar: truncated or corrupt"):
        unpack_layer(io.BytesIO(blob[: len(blob) // 2]), tmp_path / "l", source="cut.tar")


@pytest.mark.skipif(not ROOT, reason="security.capability needs root")
def test_file_capabilities_survive(tmp_path):
    import struct

    cap_net_raw = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # VFS_CAP v2, effective
    root, stats = unpack(
        tmp_path, [file("bin/ping", b"p", 0o755, xattrs={"security.capability": cap_net_raw})]
    )
    assert os.getxattr(root / "bin/ping", "security.capability") == cap_net_raw
    assert stats.skipped_xattrs == []


def test_os_errors_name_the_member(tmp_path):
    with pytest.raises(ArchiveError, match=r"test\.tar: cannot unpack member 'x{300}'"):
        unpack(tmp_path, [file("x" * 300, b"too long a name")])
