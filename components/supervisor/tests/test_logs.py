"""Log files: rotation, tail, since, follow (unit)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from keel_supervisor import logs


def test_rotation_keeps_max_files_and_order(tmp_path: Path) -> None:
    writer = logs.LogWriter(tmp_path, max_size=300, max_files=3)
    for i in range(40):
        writer.write("stdout", f"line {i}\n", when=float(i))
    writer.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["container.log", "container.log.1", "container.log.2"]
    assert all(p.stat().st_size <= 300 for p in tmp_path.iterdir())
    lines = logs.read(tmp_path)
    texts = [line.text for line in lines]
    assert texts[-1] == "line 39\n"
    assert texts == sorted(texts, key=lambda t: int(t.split()[1]))  # oldest first, no gaps
    numbers = [int(t.split()[1]) for t in texts]
    assert numbers == list(range(numbers[0], 40))


def test_tail_and_since(tmp_path: Path) -> None:
    writer = logs.LogWriter(tmp_path)
    for i in range(10):
        writer.write("stderr" if i % 2 else "stdout", f"{i}\n", when=1000.0 + i)
    writer.close()
    assert [line.text for line in logs.read(tmp_path, tail=3)] == ["7\n", "8\n", "9\n"]
    assert [line.text for line in logs.read(tmp_path, since=1007.5)] == ["8\n", "9\n"]
    assert logs.read(tmp_path, tail=0) == []
    assert logs.read(tmp_path)[1].stream == "stderr"


def test_pump_splits_lines_and_keeps_partial_tail(tmp_path: Path) -> None:
    writer = logs.LogWriter(tmp_path)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"one\ntw")
    os.write(write_fd, b"o\nthree")
    os.close(write_fd)
    logs.pump(read_fd, "stdout", writer)
    assert [line.text for line in logs.read(tmp_path)] == ["one\n", "two\n", "three"]


def test_follow_sees_new_lines_across_rotation(tmp_path: Path) -> None:
    writer = logs.LogWriter(tmp_path, max_size=200, max_files=2)
    writer.write("stdout", "old\n")
    done = threading.Event()
    first = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        for line in logs.follow(tmp_path, tail=1, until=done.is_set, poll=0.01):
            seen.append(line.text)
            first.set()

    thread = threading.Thread(target=reader)
    thread.start()
    assert first.wait(5)
    for i in range(10):  # each write rotates at most once between two polls of the reader
        writer.write("stdout", f"new {i}\n")
        time.sleep(0.05)
    writer.close()
    assert (tmp_path / "container.log.1").exists()
    deadline = time.monotonic() + 5
    while len(seen) < 11 and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    thread.join(5)
    assert seen[0] == "old\n"
    assert seen[1:] == [f"new {i}\n" for i in range(10)]


def test_parse_since() -> None:
    assert logs.parse_since("10m", now=1000.0) == 400.0
    assert logs.parse_since("1700000000") == 1_700_000_000.0
    assert logs.parse_since("2024-01-01T00:00:00Z") == 1_704_067_200.0
    with pytest.raises(ValueError, match="duration"):
        logs.parse_since("yesterday")
