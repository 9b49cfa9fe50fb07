"""The pytest plugin: harness faults are errors, failures keep machine logs and say where."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

FAULT_AND_FAILURE = """
import pytest
from keel_harness.errors import GateFailure, QemuError, SshError

@pytest.fixture
def gated():
    raise GateFailure("node1", ["failed unit: x.service"])

@pytest.fixture
def unreachable():
    raise SshError("no SSH")

def test_gate_in_fixture(gated):
    pass

def test_fault_in_fixture(unreachable):
    pass

def test_fault():
    raise QemuError("m1", "QEMU exited right after start", "no such device")

def test_failure():
    assert 1 == 2
"""

ARTIFACTS = """
def test_broken(machine_factory):
    m = machine_factory("node7")
    (m.state_dir / "console.log").write_text("[ 1.0] Kernel panic - not syncing: x\\n")
    (m.state_dir / "config.json").write_text("{}")
    assert False, "the machine did not do its job"

def test_fine(machine_factory):
    machine_factory("node8")
"""


def test_harness_fault_is_an_error_and_a_test_failure_a_failure(pytester: pytest.Pytester):
    pytester.makepyfile(FAULT_AND_FAILURE)
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*::test_gate_in_fixture FAILED (gate)*",
            "*::test_fault_in_fixture ERROR*",
            "*::test_fault ERROR (harness)*",
            "*::test_failure FAILED*",
        ]
    )


def run_with_artifacts(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> tuple[pytest.RunResult, Path]:
    """Run ``source`` (one failing and one passing test) with artifacts under ``arts``."""
    monkeypatch.setenv("KEEL_HARNESS_ACCEL", "tcg")
    pytester.makepyfile(source)
    out = pytester.path / "arts"
    result = pytester.runpytest("--keel-artifacts", str(out), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    return result, out


def test_failed_test_leaves_machine_logs_and_prints_the_path(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    result, out = run_with_artifacts(pytester, monkeypatch, ARTIFACTS)
    folder = out / "test_failed_test_leaves_machine_logs_and_prints_the_path.py_test_broken"
    assert (folder / "node7" / "console.log").read_text().startswith("[ 1.0] Kernel panic")
    assert (folder / "node7" / "config.json").exists()
    assert not (
        out / "test_failed_test_leaves_machine_logs_and_prints_the_path.py_test_fine"
    ).exists()
    result.stdout.fnmatch_lines([f"machine logs: {folder}"])


SHARED = """
import pytest

@pytest.fixture(scope="module")
def shared(module_machine_factory):
    m = module_machine_factory("node9")
    (m.state_dir / "console.log").write_text("[ 2.0] shared boot\\n")
    return m

def test_uses_it(shared):
    pass

def test_fails_with_it(shared):
    assert False, "the shared machine did not do its job"
"""


def test_a_module_machine_leaves_logs_for_each_failing_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    _, out = run_with_artifacts(pytester, monkeypatch, SHARED)
    prefix = "test_a_module_machine_leaves_logs_for_each_failing_test.py_"
    folder = out / f"{prefix}test_fails_with_it"
    assert (folder / "node9" / "console.log").read_text() == "[ 2.0] shared boot\n"
    assert not (out / f"{prefix}test_uses_it").exists()


STALLED = """
import pytest
from keel_harness.pytest_plugin import _record_boot

class Machine:
    name = "node3"
    stalled_boots = ["node3: no console output for 70 s and every vCPU at the same instruction"]

@pytest.fixture
def booted(request):
    _record_boot(request, Machine(), 42.0)

def test_passes_after_a_stalled_boot(booted):
    pass

def test_boots_in_its_body(request):
    _record_boot(request, Machine(), 40.0)
"""


def test_a_stalled_boot_started_again_is_named_in_the_summary(pytester: pytest.Pytester):
    pytester.makepyfile(STALLED)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*keel: stalled boots, started again*",
            "*::test_passes_after_a_stalled_boot: node3: no console output for 70 s*",
            "*::test_boots_in_its_body: node3: no console output for 70 s*",
        ]
    )
    assert result.stdout.str().count("test_passes_after_a_stalled_boot: node3") == 1
