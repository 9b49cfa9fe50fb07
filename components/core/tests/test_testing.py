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
        # The busy port first, then random ones: a fixed second pick (taken + 1) could
        # itself be busy or handed out already (CI failed on that once).
        real = testing._rng.randrange
        picks: list[int] = []

        def pick(a: int, b: int) -> int:
            picks.append(taken if not picks else real(a, b))
            return picks[-1]

        monkeypatch.setattr(testing, "_ephemeral_low", lambda: 65535)
        monkeypatch.setattr(testing._rng, "randrange", pick)
        port = testing.free_port()
        assert picks[0] == taken
        assert port != taken
        assert port == picks[-1]


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
