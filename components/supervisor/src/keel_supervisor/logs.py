"""Container logs: one JSON object per line, rotated by size, read with tail/since/follow.

The format is docker's ``json-file`` (``{"log": "...\\n", "stream": "stdout", "time":
...}``) so existing habits and tools carry over. The monitor writes, every other process
only reads; rotation renames ``container.log`` to ``container.log.1`` and so on, and a
follower notices by the inode changing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

LOG_NAME = "container.log"


@dataclass(frozen=True)
class LogLine:
    """One line a container wrote."""

    time: float
    stream: str
    text: str

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps({"log": self.text, "stream": self.stream, "time": self.time}) + "\n"

    @classmethod
    def from_json(cls, raw: str) -> LogLine | None:
        """Parse a stored line; ``None`` for a torn or foreign line."""
        try:
            data = json.loads(raw)
            return cls(float(data["time"]), str(data["stream"]), str(data["log"]))
        except (ValueError, KeyError, TypeError):
            return None


class LogWriter:
    """Appends lines to ``dir/container.log``, keeping at most ``max_files`` files."""

    def __init__(self, directory: Path, *, max_size: int = 10 << 20, max_files: int = 3) -> None:
        self.directory = directory
        self.max_size = max_size
        self.max_files = max(1, max_files)
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open on purpose

    @property
    def path(self) -> Path:
        """The file being written."""
        return self.directory / LOG_NAME

    def write(self, stream: str, text: str, when: float | None = None) -> None:
        """Record one line (``text`` keeps its newline, like docker)."""
        entry = LogLine(time.time() if when is None else when, stream, text).to_json()
        with self._lock:
            if self._file.tell() + len(entry) > self.max_size and self._file.tell() > 0:
                self._rotate()
            self._file.write(entry)
            self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self.max_files - 1, 0, -1):
            older = self.directory / f"{LOG_NAME}.{index}"
            newer = self.directory / (LOG_NAME if index == 1 else f"{LOG_NAME}.{index - 1}")
            if newer.exists():
                os.replace(newer, older)
        if self.max_files == 1:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        """Flush and close."""
        with self._lock:
            self._file.close()


def pump(fd: int, stream: str, writer: LogWriter) -> None:
    """Copy lines from ``fd`` (a pipe from the container) into ``writer`` until EOF."""
    pending = b""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                writer.write(stream, line.decode("utf-8", "replace") + "\n")
            if len(pending) > 16384:  # a very long line without a newline: flush it in parts
                writer.write(stream, pending.decode("utf-8", "replace"))
                pending = b""
    if pending:
        writer.write(stream, pending.decode("utf-8", "replace"))


def _files(directory: Path) -> list[Path]:
    rotated = sorted(
        (p for p in directory.glob(f"{LOG_NAME}.*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    current = directory / LOG_NAME
    return [*rotated, *([current] if current.exists() else [])]


def read(directory: Path, *, tail: int | None = None, since: float | None = None) -> list[LogLine]:
    """Stored lines, oldest first; the last ``tail`` of those at or after ``since``."""
    keep: deque[LogLine] = deque(maxlen=tail if tail is not None and tail >= 0 else None)
    for path in _files(directory):
        with open(path, encoding="utf-8", errors="replace") as handle:
            for raw in handle:
                line = LogLine.from_json(raw)
                if line and (since is None or line.time >= since):
                    keep.append(line)
    return list(keep)


def follow(
    directory: Path,
    *,
    tail: int | None = None,
    since: float | None = None,
    until: Callable[[], bool] = lambda: False,
    poll: float = 0.1,
) -> Iterator[LogLine]:
    """Stored lines as :func:`read`, then new ones as they come, until ``until()`` is true.

    The current file is opened before anything is read, so no line written meanwhile is
    lost; a rotation is noticed by the file's inode changing.
    """
    path = directory / LOG_NAME
    path.touch(exist_ok=True)
    handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    try:
        inode = os.fstat(handle.fileno()).st_ino
        keep: deque[LogLine] = deque(maxlen=tail if tail is not None and tail >= 0 else None)
        for older in _files(directory)[:-1]:
            with open(older, encoding="utf-8", errors="replace") as old:
                keep.extend(_parse(old, since))
        keep.extend(_parse(handle, since))
        yield from keep
        partial = ""
        while True:
            raw = handle.readline()
            if raw:
                partial += raw
                if partial.endswith("\n"):
                    line = LogLine.from_json(partial)
                    partial = ""
                    if line and (since is None or line.time >= since):
                        yield line
                continue
            try:
                rotated = os.stat(path).st_ino != inode
            except FileNotFoundError:
                rotated = False
            if rotated:
                handle.close()
                handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                inode = os.fstat(handle.fileno()).st_ino
                continue
            if until():
                return
            time.sleep(poll)
    finally:
        handle.close()


def _parse(handle: IO[str], since: float | None) -> Iterator[LogLine]:
    """Complete lines of an open log file at or after ``since``; stops before a torn line."""
    while True:
        offset = handle.tell()
        raw = handle.readline()
        if not raw.endswith("\n"):
            handle.seek(offset)
            return
        line = LogLine.from_json(raw)
        if line and (since is None or line.time >= since):
            yield line


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a Unix time, an ISO date-time, or a duration ago (``10s``, ``5m``, ``2h``)."""
    now = time.time() if now is None else now
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a duration (10m), a Unix time or an ISO date-time"
        ) from None
    return stamp.timestamp()
