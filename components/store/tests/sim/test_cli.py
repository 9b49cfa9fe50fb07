"""``python -m keel_store.sim``: exit status, failure report, and a replay that reproduces."""

import os
import shlex
import subprocess
import sys

import pytest

from keel_store.sim.__main__ import main

VOTE_STORM = [
    "--unsafe", "unsafe_skip_persist_vote",
    "--set", "crash_rate=0.05", "--set", "restart_rate=0.5", "--set", "pre_vote=false",
    "--set", "check_quorum=false", "--set", "check_liveness=false", "--no-linearizability",
    "--set", "unreachable_report_rate=0", "--set", "unreachable_seen=0",
]  # fmt: skip


def test_passing_seeds_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "3", "--jobs", "1", "--steps", "200"]) == 0
    out = capsys.readouterr().out
    assert "3 passed, 0 failed" in out


def test_failing_seed_prints_a_replay_command_that_fails_the_same_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--seeds", "1", "--start", "38", "--jobs", "1", *VOTE_STORM]) == 1
    out = capsys.readouterr().out
    [failure] = [line for line in out.splitlines() if line.startswith("FAILED seed 38")]
    assert "election safety" in failure
    [replay] = [line for line in out.splitlines() if line.strip().startswith("replay:")]
    command = shlex.split(replay.split("replay:", 1)[1])
    assert command[:3] == ["python", "-m", "keel_store.sim"]
    assert main(command[3:]) == 1
    replayed = capsys.readouterr().out
    assert failure.split(": ", 1)[1] in replayed
    assert "node 1 starts" in replayed  # -v shows the trace


def test_replay_is_identical_across_processes_and_hash_seeds() -> None:
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-m", "keel_store.sim", "--replay", "5", "--steps", "200", "-v"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=120,
        )
        outputs.add(run.stdout)
    assert len(outputs) == 1


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--seeds", "1", "--set", "warp=9"])
    assert "warp=9" in capsys.readouterr().err
