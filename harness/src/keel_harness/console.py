"""The serial console log of a machine: read it, search it, check it for trouble."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# What kola flags on a console (mantle harness.go consoleChecks), narrowed to a systemd
# Debian guest: each pattern with the name the gate reports.
TROUBLE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kernel panic", re.compile(r"Kernel panic - not syncing")),
    # A vCPU starved by a busy host can report a short lockup and go on; one stuck for a
    # minute or more (the report repeats every ~26 s with the total) is a hung machine.
    ("soft lockup", re.compile(r"BUG: soft lockup - CPU#\d+ stuck for (?:[6-9]\d|\d{3,})s!")),
    ("kernel oops", re.compile(r"\bOops(: | - )|\bBUG: ")),
    ("kernel warning", re.compile(r"WARNING: CPU: \d+ PID: \d+")),
    ("segfault", re.compile(r"segfault at [0-9a-f]+|SIGSEGV|general protection fault")),
    ("emergency shell", re.compile(r"You are in emergency mode|emergency shell|Emergency Shell")),
    ("rescue mode", re.compile(r"You are in rescue mode")),
    ("ordering cycle", re.compile(r"Ordering cycle found")),
    ("out of memory", re.compile(r"invoked oom-killer")),
    ("core dump", re.compile(r"\(core dumped\)|dumped core")),
    ("I/O to offline device", re.compile(r"rejecting I/O to offline device")),
)


def find_trouble(text: str) -> list[str]:
    """One line per trouble pattern found in ``text``: ``name: the offending line``."""
    found = []
    for name, pattern in TROUBLE:
        match = pattern.search(text)
        if match:
            start = text.rfind("\n", 0, match.start()) + 1
            end = text.find("\n", match.end())
            line = text[start : end if end != -1 else len(text)].strip()
            found.append(f"{name}: {line}")
    return found


@dataclass
class ConsoleLog:
    """A console file and the offset where the current boot's output starts."""

    path: Path
    start: int = 0

    def mark(self) -> None:
        """Remember the current end: later reads see only what comes after (a new start)."""
        self.start = self.path.stat().st_size if self.path.exists() else 0

    def text(self, *, whole: bool = False) -> str:
        """Console output since the last :meth:`mark` (or everything if ``whole``)."""
        if not self.path.exists():
            return ""
        with self.path.open("rb") as f:
            if not whole:
                f.seek(self.start)
            return f.read().decode(errors="replace").replace("\r\n", "\n")

    def search(self, pattern: str | re.Pattern[str]) -> re.Match[str] | None:
        """The first match of ``pattern`` in the output since the mark."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        return regex.search(self.text())

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines since the mark, for error messages."""
        return "\n".join(self.text().splitlines()[-lines:])
