"""Run Keel's benchmarks: ``nox -s bench`` (all) or ``nox -s bench -- store raft``.

Each ``benchmarks/bench_<name>.py`` defines ``main(argv: list[str]) -> int``. It
measures Keel against the real peer in the same run (etcd, bare runc, ...) and prints
figures and ratios; timings on a shared machine are noisy, so it asserts nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).parent


def available() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def main(argv: list[str]) -> int:
    benches = available()
    # A word right after an option that names no benchmark is the option's value
    # (``--boots 3``, ``--compare DIR``).
    values = {
        i + 1
        for i, a in enumerate(argv[:-1])
        if a.startswith("-") and not argv[i + 1].startswith("-") and argv[i + 1] not in benches
    }
    names = [a for i, a in enumerate(argv) if not a.startswith("-") and i not in values]
    names = names or list(benches)
    unknown = [n for n in names if n not in benches]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(benches)}")
        return 2
    if not benches:
        print("no benchmarks yet")
        return 0
    options = [a for i, a in enumerate(argv) if a.startswith("-") or i in values]
    status = 0
    for name in names:
        print(f"\n=== bench {name}")
        spec = importlib.util.spec_from_file_location(f"bench_{name}", benches[name])
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {benches[name]}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        status |= int(module.main(options))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
