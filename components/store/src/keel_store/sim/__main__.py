"""``python -m keel_store.sim``: run many seeds, or replay one with a trace.

Exit status is 1 if any seed fails; each failure is printed with its seed and the exact
command that replays it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keel_store.raft.config import RaftConfig
from keel_store.sim.options import SimOptions
from keel_store.sim.world import RunResult, run_seed

DEFAULT_STEPS = SimOptions().steps
UNSAFE = sorted(n for n in RaftConfig.__dataclass_fields__ if n.startswith("unsafe_"))


def parse(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m keel_store.sim", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run (default 100)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps with faults")
    p.add_argument("--replay", type=int, metavar="SEED", help="run one seed and show its trace")
    p.add_argument("-v", "--verbose", action="store_true", help="with --replay: print events")
    p.add_argument(
        "--unsafe", action="append", default=[], choices=UNSAFE, help="remove a safety mechanism"
    )
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="override an option"
    )
    p.add_argument("--no-linearizability", action="store_true", help="skip the history check")
    args = p.parse_args(argv)
    if args.seeds < 0 or args.nodes < 1 or args.jobs < 1 or args.steps < 0:
        p.error("--seeds, --steps must be >= 0 and --nodes, --jobs >= 1")
    try:
        options_from(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def options_from(args: argparse.Namespace) -> SimOptions:
    """SimOptions for the parsed command line."""
    options = SimOptions(
        nodes=args.nodes,
        steps=args.steps,
        unsafe=dict.fromkeys(args.unsafe, True),
        check_linearizability=not args.no_linearizability,
    )
    for assignment in args.set:
        options.set(assignment)
    return options


def replay_command(seed: int, args: argparse.Namespace) -> str:
    """The command that replays ``seed`` with the same options."""
    cmd = ["python", "-m", "keel_store.sim", "--replay", str(seed), "--nodes", str(args.nodes)]
    if args.steps != DEFAULT_STEPS:
        cmd += ["--steps", str(args.steps)]
    for name in args.unsafe:
        cmd += ["--unsafe", name]
    for assignment in args.set:
        cmd += ["--set", assignment]
    if args.no_linearizability:
        cmd.append("--no-linearizability")
    return shlex.join([*cmd, "-v"])


def _run(job: tuple[int, SimOptions]) -> RunResult:
    seed, options = job
    return run_seed(seed, options)


def run_many(seeds: range, options: SimOptions, jobs: int) -> Iterator[RunResult]:
    """Results of ``seeds``, in completion order, on ``jobs`` processes."""
    work = [(seed, options) for seed in seeds]
    if jobs == 1 or len(work) < 8:
        yield from map(_run, work)
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap_unordered(_run, work, chunksize=4)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse(sys.argv[1:] if argv is None else argv)
    options = options_from(args)
    console = Console(stderr=True)
    out = Console(soft_wrap=True)
    if args.replay is not None:
        result = run_seed(args.replay, options, verbose=args.verbose)
        for line in result.log:
            out.print(line, markup=False, highlight=False)
        out.print(summary(result), markup=False, highlight=False)
        return 0 if result.ok else 1
    seeds = range(args.start, args.start + args.seeds)
    failures: list[RunResult] = []
    totals = {"committed": 0, "ops": 0, "unknown": 0, "crashes": 0, "elections": 0}
    began = time.monotonic()
    columns = (
        TextColumn("[bold]sim"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("seeds", total=len(seeds), failed=0)
        for result in run_many(seeds, options, args.jobs):
            totals["committed"] += result.committed
            totals["ops"] += result.completed_ops
            totals["unknown"] += result.unknown_ops
            totals["crashes"] += result.crashes
            totals["elections"] += result.elections
            if not result.ok:
                failures.append(result)
                progress.console.print(
                    f"[red]seed {result.seed} FAILED[/red]: {result.failure}", highlight=False
                )
            progress.update(task, advance=1, failed=len(failures))
    elapsed = time.monotonic() - began
    out.print(
        f"{len(seeds)} seeds ({args.start}..{args.start + len(seeds) - 1}), {args.nodes} nodes:"
        f" {len(seeds) - len(failures)} passed, {len(failures)} failed in {elapsed:.1f}s;"
        f" {totals['committed']} entries committed, {totals['ops']} client ops completed,"
        f" {totals['unknown']} unknown, {totals['elections']} elections,"
        f" {totals['crashes']} crashes",
        highlight=False,
    )
    for result in sorted(failures, key=lambda r: r.seed):
        out.print(f"FAILED seed {result.seed}: {result.failure}", markup=False, highlight=False)
        out.print(f"  replay: {replay_command(result.seed, args)}", markup=False, highlight=False)
    return 1 if failures else 0


def summary(result: RunResult) -> str:
    """One line about a run."""
    status = "ok" if result.ok else f"FAILED: {result.failure}"
    return (
        f"seed {result.seed}: {status}; committed {result.committed}, acked writes"
        f" {result.acked_writes}, ops {result.completed_ops} (+{result.unknown_ops} unknown),"
        f" elections {result.elections}, crashes {result.crashes}, messages {result.messages},"
        f" linearizable {result.linearizable}"
    )


if __name__ == "__main__":
    sys.exit(main())
