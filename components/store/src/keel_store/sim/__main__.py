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
from keel_store.sim.options import SimOptions, for_seed, profile_of
from keel_store.sim.world import RunResult, run_seed

DEFAULT_STEPS = SimOptions().steps
TOTALS: tuple[str, ...] = ("committed", "ops", "unknown", "crashes", "elections", "snapshots")
TOTALS += ("changes", "transfers", "reports")
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
    p.add_argument(
        "--no-mix",
        action="store_true",
        help="run every seed with the default faults (else each seed gets a profile)",
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


def options_from(args: argparse.Namespace, seed: int = 0) -> SimOptions:
    """SimOptions of ``seed`` for the parsed command line."""
    options = SimOptions(
        nodes=args.nodes,
        steps=args.steps,
        unsafe=dict.fromkeys(args.unsafe, True),
        check_linearizability=not args.no_linearizability,
    )
    if not args.no_mix:
        return for_seed(options, seed, args.set)
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
    if args.no_mix:
        cmd.append("--no-mix")
    return shlex.join([*cmd, "-v"])


def _run(job: tuple[int, SimOptions]) -> RunResult:
    seed, options = job
    return run_seed(seed, options)


def run_many(seeds: range, args: argparse.Namespace) -> Iterator[RunResult]:
    """Results of ``seeds``, in completion order, on ``args.jobs`` processes."""
    jobs = args.jobs
    work = [(seed, options_from(args, seed)) for seed in seeds]
    if jobs == 1 or len(work) < 8:
        yield from map(_run, work)
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap_unordered(_run, work, chunksize=4)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=True)
    out = Console(soft_wrap=True)
    if args.replay is not None:
        result = run_seed(args.replay, options_from(args, args.replay), verbose=args.verbose)
        for line in result.log:
            out.print(line, markup=False, highlight=False)
        out.print(summary(result), markup=False, highlight=False)
        return 0 if result.ok else 1
    seeds = range(args.start, args.start + args.seeds)
    failures: list[RunResult] = []
    totals = dict.fromkeys(
        (
            "committed",
            "ops",
            "unknown",
            "crashes",
            "elections",
            "snapshots",
            "changes",
            "transfers",
            "reports",
        ),
        0,
    )
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
        for result in run_many(seeds, args):
            totals["committed"] += result.committed
            totals["ops"] += result.completed_ops
            totals["unknown"] += result.unknown_ops
            totals["crashes"] += result.crashes
            totals["elections"] += result.elections
            totals["snapshots"] += result.snapshots_sent
            totals["changes"] += result.membership_changes
            totals["transfers"] += result.transfers
            totals["reports"] += result.unreachable_reports
            if not result.ok:
                failures.append(result)
                progress.console.print(
                    f"[red]seed {result.seed} FAILED[/red]: {result.failure}",
                    highlight=False,
                    markup=False,
                )
            progress.update(task, advance=1, failed=len(failures))
    elapsed = time.monotonic() - began
    out.print(
        f"{len(seeds)} seeds ({args.start}..{args.start + len(seeds) - 1}), {args.nodes} nodes:"
        f" {len(seeds) - len(failures)} passed, {len(failures)} failed in {elapsed:.1f}s;"
        f" {totals['committed']} entries committed, {totals['ops']} client ops completed,"
        f" {totals['unknown']} unknown, {totals['elections']} elections,"
        f" {totals['crashes']} crashes, {totals['snapshots']} snapshots sent,"
        f" {totals['changes']} membership changes, {totals['transfers']} leader transfers,"
        f" {totals['reports']} leader-unreachable reports",
        highlight=False,
    )
    for result in sorted(failures, key=lambda r: r.seed):
        mix = "" if args.no_mix else f" (profile {profile_of(result.seed)})"
        out.print(
            f"FAILED seed {result.seed}{mix}: {result.failure}", markup=False, highlight=False
        )
        out.print(f"  replay: {replay_command(result.seed, args)}", markup=False, highlight=False)
    return 1 if failures else 0


def summary(result: RunResult) -> str:
    """One line about a run."""
    status = "ok" if result.ok else f"FAILED: {result.failure}"
    return (
        f"seed {result.seed}: {status}; committed {result.committed}, acked writes"
        f" {result.acked_writes}, ops {result.completed_ops} (+{result.unknown_ops} unknown),"
        f" elections {result.elections}, crashes {result.crashes}, messages {result.messages},"
        f" snapshots sent {result.snapshots_sent}, membership changes"
        f" {result.membership_changes}, transfers {result.transfers}, leader-unreachable"
        f" reports {result.unreachable_reports}, linearizable {result.linearizable}"
    )


if __name__ == "__main__":
    sys.exit(main())
