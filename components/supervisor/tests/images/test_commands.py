"""The plain functions behind ``keel images / load / pull / rmi``."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from keel_supervisor.images import ImageError, ImageStore, commands
from keel_supervisor.images.testing import file, layer_tar, write_docker_archive


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, color_system=None), out


def test_load_images_rmi_round_trip(tmp_path):
    store = ImageStore(tmp_path / "store")
    write_docker_archive(tmp_path / "s.tar", [layer_tar([file("x", b"1" * 2000)])], ["demo:v1"])
    con, out = console()
    [image] = commands.load(store, tmp_path / "s.tar", con)
    assert "Loaded image: demo:v1" in out.getvalue()
    con, out = console()
    commands.images(store, con)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert lines[1].split()[:3] == ["demo", "v1", image.id[7:19]]
    assert lines[1].split()[-1] == "2kB"
    con, out = console()
    freed = commands.rmi(store, ["demo:v1"], con)
    assert freed > 2000
    assert out.getvalue().splitlines()[:2] == ["Untagged: demo:v1", f"Deleted: {image.id}"]
    assert store.list() == []


def test_quiet_lists_short_ids(tmp_path):
    store = ImageStore(tmp_path / "store")
    write_docker_archive(tmp_path / "s.tar", [layer_tar([file("x")])], [])
    [image] = store.load(tmp_path / "s.tar")
    con, out = console()
    commands.images(store, con, quiet=True)
    assert out.getvalue().split() == [image.id[7:19]]


@pytest.mark.parametrize(("size", "text"), [(0, "0B"), (999, "999B"), (1_900_000, "1.9MB")])
def test_human_size(size, text):
    assert commands.human_size(size) == text


def test_bad_creds():
    assert commands.parse_creds("u:p:q") == ("u", "p:q")
    with pytest.raises(ImageError, match="USER:PASSWORD"):
        commands.parse_creds("nocolon")


def test_rows_for_digest_and_unnamed_images(tmp_path):
    store = ImageStore(tmp_path / "store")
    write_docker_archive(tmp_path / "s.tar", [layer_tar([file("x")])], [])
    [image] = store.load(tmp_path / "s.tar")
    store.tag(image.id, "127.0.0.1:5000/app@sha256:" + "a" * 64)
    [unnamed_or_digest] = commands.image_rows([store.get(image.id)])
    assert unnamed_or_digest[:3] == ("127.0.0.1:5000/app", "<none>", image.id[7:19])
