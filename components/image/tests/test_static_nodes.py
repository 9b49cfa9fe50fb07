"""kmod's static device nodes, written at build time (customize._static_nodes)."""

from __future__ import annotations

from pathlib import Path

from keel_image import customize

DEVNAME = """\
# Device nodes to trigger on-demand module loading.
tun net/tun c10:200
snd_timer snd/timer c116:33
snd_seq snd/seq c116:1
loop loop-control c10:237
dm_mod mapper/control c10:236
odd odd-node x1:2
"""


def test_static_nodes_as_kmod_writes_them_one_line_per_directory(tmp_path: Path):
    tree, moddir = tmp_path / "tree", tmp_path / "modules"
    moddir.mkdir()
    (moddir / "modules.devname").write_text(DEVNAME)
    customize._static_nodes(tree, moddir)
    lines = (tree / "usr/lib/tmpfiles.d/static-nodes-keel.conf").read_text().splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == [
        "d /dev/net 0755 - - -",
        "c! /dev/net/tun 0600 - - - 10:200",
        "d /dev/snd 0755 - - -",
        "c! /dev/snd/timer 0600 - - - 116:33",
        "c! /dev/snd/seq 0600 - - - 116:1",
        "c! /dev/loop-control 0600 - - - 10:237",
        "d /dev/mapper 0755 - - -",
        "c! /dev/mapper/control 0600 - - - 10:236",
    ]
    # The boot-time unit that did this is masked (an empty unit file).
    assert (tree / "usr/lib/systemd/system/kmod-static-nodes.service").read_bytes() == b""


def test_static_nodes_without_a_devname_file_writes_only_the_header(tmp_path: Path):
    customize._static_nodes(tmp_path / "tree", tmp_path / "no-modules")
    text = (tmp_path / "tree/usr/lib/tmpfiles.d/static-nodes-keel.conf").read_text()
    assert len(text.splitlines()) == 1
    assert text.startswith("#")
