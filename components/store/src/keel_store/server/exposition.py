"""The Prometheus text exposition format (version 0.0.4), as Go's client writes it.

Families sorted by name, each with ``# HELP`` and ``# TYPE``; a histogram's samples
are ``_bucket{le=...}`` (cumulative, ``+Inf`` last), ``_sum`` and ``_count``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from keel_store.server.stats import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric family: ``(suffix, labels, value)`` samples under one name."""

    name: str
    type: str  # counter, gauge, histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels = ()) -> Family:
        self.samples.append(("", labels, value))
        return self

    def add_histogram(self, h: Histogram, labels: Labels = ()) -> Family:
        count = 0
        for bound, count in h.cumulative():
            self.samples.append(("_bucket", (*labels, ("le", format_value(bound))), count))
        self.samples.append(("_sum", labels, h.sum))
        self.samples.append(("_count", labels, count))
        return self


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render(families: Iterable[Family]) -> bytes:
    lines: list[str] = []
    for fam in sorted(families, key=lambda f: f.name):
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for suffix, labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                lines.append(f"{fam.name}{suffix}{{{inner}}} {format_value(value)}")
            else:
                lines.append(f"{fam.name}{suffix} {format_value(value)}")
    return ("\n".join(lines) + "\n").encode()
