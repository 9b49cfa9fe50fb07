"""sd_notify without libsystemd: what systemd's notification socket receives."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel_core import systemd


@pytest.fixture
def systemd_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """systemd's end: a datagram socket named by $NOTIFY_SOCKET."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        yield server


def test_ready_goes_to_the_socket_and_the_variable_is_dropped(systemd_socket: socket.socket):
    assert systemd.notify() is True
    assert systemd_socket.recv(100) == b"READY=1"
    assert "NOTIFY_SOCKET" not in os.environ  # children (monitors) never notify


def test_abstract_socket_address(monkeypatch: pytest.MonkeyPatch):
    name = f"keel-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STATUS=serving") is True
        assert server.recv(100) == b"STATUS=serving"


def test_nothing_happens_outside_systemd(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify() is False


def test_a_taken_socket_is_out_of_the_environment_and_still_usable(
    systemd_socket: socket.socket,
):
    address = systemd.take_socket()
    assert "NOTIFY_SOCKET" not in os.environ
    assert systemd.notify() is False  # nothing left in the environment
    assert systemd.notify(address=address) is True
    assert systemd_socket.recv(100) == b"READY=1"
