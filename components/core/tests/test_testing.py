from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from keel_core import testing


def test_free_port_is_bindable_below_the_ephemeral_range_and_never_repeats():
    low = int(testing.EPHEMERAL_RANGE.read_text().split()[0])
    ports = [testing.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(testing.LOWEST <= p < low for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))


def test_free_port_skips_a_port_in_use(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        busy.listen()
        picks = iter([taken, taken + 1 if taken + 1 < 60000 else taken - 1])
        monkeypatch.setattr(testing, "_ephemeral_low", lambda: 65535)
        monkeypatch.setattr(testing._rng, "randrange", lambda a, b: next(picks))
        assert testing.free_port() != taken


def test_process_cpu_seconds_counts_this_process_and_refuses_a_gone_one():
    before = testing.process_cpu_seconds(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    assert testing.process_cpu_seconds(os.getpid()) - before >= 0.2
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(FileNotFoundError):
        testing.process_cpu_seconds(child.pid)
