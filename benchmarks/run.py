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
    names = [a for a in argv if not a.startswith("-")] or list(benches)
    unknown = [n for n in names if n not in benches]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(benches)}")
        return 2
    if not benches:
        print("no benchmarks yet")
        return 0
    options = [a for a in argv if a.startswith("-")]
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
