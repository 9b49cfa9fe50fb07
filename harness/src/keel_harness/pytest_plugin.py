"""Keel's pytest plugin (entry point ``pytest11``): machines, clusters, gate, artifacts.

Fixtures:

``keel_run`` (session)
    the run's SSH key, accelerator verdict and folders (:class:`~keel_harness.run.HarnessRun`).
``keel_image`` (session)
    the default image's disk, built (or reused by content hash) from ``--keel-image``
    (a definition, an image directory or a disk; default ``images/keel.yaml``).
``machine_factory``
    ``machine_factory(name, image=None, **config) -> Machine``, not started; stopped, and
    its artifacts kept on failure, at teardown.
``module_machine_factory``
    the same for machines shared by a module's tests (stopped after the module).
``machine``
    one booted machine of the default image that passed the gate.
``cluster``
    ``cluster(n, image=None) -> Cluster``: n machines on a private segment, booted and gated.
``keel_host``
    the testinfra host of ``machine``.

Harness faults (:class:`~keel_harness.errors.HarnessError`) are reported as errors, not
failures. A failed test's machines leave console, journal and failed units under
``--keel-artifacts`` (default ``artifacts/``)/<test id>/<machine>/; the path is printed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from keel_harness import artifacts, images
from keel_harness.cluster import Cluster
from keel_harness.errors import CommandFailed, GateFailure, HarnessError
from keel_harness.gate import run_gate
from keel_harness.machine import Machine
from keel_harness.run import HarnessRun

MACHINES = pytest.StashKey[list[Machine]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """The harness's command-line options (also settable through the environment)."""
    group = parser.getgroup("keel", "Keel QEMU harness")
    group.addoption("--keel-image", default=os.environ.get("KEEL_IMAGE"),
                    help="image definition (.yaml), image directory or disk to boot "
                         "(default: images/keel.yaml; env KEEL_IMAGE)")  # fmt: skip
    group.addoption("--keel-firmware", choices=("bios", "uefi"),
                    default=os.environ.get("KEEL_FIRMWARE", "bios"),
                    help="firmware machines boot with (env KEEL_FIRMWARE)")  # fmt: skip
    group.addoption(
        "--keel-artifacts",
        default=os.environ.get("KEEL_ARTIFACTS"),
        help="where failed tests leave machine logs (default: <rootdir>/artifacts)",
    )
    group.addoption("--keel-boot-timeout", type=float, default=600.0,
                    help="seconds a machine may take to answer on SSH")  # fmt: skip


def _artifacts_root(config: pytest.Config) -> Path:
    opt = config.getoption("--keel-artifacts")
    return Path(opt) if opt else Path(config.rootpath) / "artifacts"


@pytest.fixture(scope="session")
def keel_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> HarnessRun:
    """The run's key pair, accelerator and folders, shared by every machine of the session."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return HarnessRun(
        tmp_path_factory.mktemp("keel-harness"),
        accel_cache=shared / "keel-harness-accel.txt",
        firmware=request.config.getoption("--keel-firmware"),
        boot_timeout=request.config.getoption("--keel-boot-timeout"),
        workers=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
    )


def _image_spec(config: pytest.Config) -> Path:
    opt = config.getoption("--keel-image")
    return Path(opt) if opt else Path(config.rootpath) / "images" / "keel.yaml"


@pytest.fixture(scope="session")
def keel_image(request: pytest.FixtureRequest) -> Path:
    """The default image's disk (built once, or reused by content hash)."""
    return images.resolve(_image_spec(request.config))


@pytest.fixture(scope="session")
def keel_image_variant(request: pytest.FixtureRequest) -> Callable[..., Path]:
    """``keel_image_variant([(name, plugin), ...])``: the default definition built with extra
    pluggy plugins (e.g. one whose ``keel_image_contribution`` adds a failing unit)."""
    spec = _image_spec(request.config)
    if spec.suffix not in images.DEFINITION_SUFFIXES:
        pytest.skip(f"variant images need a definition to build, not {spec}")

    def build(extra_plugins: list[tuple[str, object]]) -> Path:
        return images.build(spec, extra_plugins)

    return build


def _track(request: pytest.FixtureRequest, machine: Machine) -> None:
    request.node.stash.setdefault(MACHINES, []).append(machine)


def _machines(
    request: pytest.FixtureRequest, keel_run: HarnessRun, directory: Path
) -> Iterator[Callable[..., Machine]]:
    made: list[Machine] = []

    def make(name: str = "machine", image: Path | None = None, **config: Any) -> Machine:
        cfg = keel_run.config(name, image=image, **config)
        machine = Machine(cfg, directory / name)
        made.append(machine)
        _track(request, machine)
        return machine

    yield make
    for machine in made:
        machine.stop()


@pytest.fixture
def machine_factory(
    request: pytest.FixtureRequest, keel_run: HarnessRun, tmp_path: Path
) -> Iterator[Callable[..., Machine]]:
    """Make machines (not started) that are stopped at teardown whatever happens."""
    yield from _machines(request, keel_run, tmp_path)


@pytest.fixture(scope="module")
def module_machine_factory(
    request: pytest.FixtureRequest, keel_run: HarnessRun, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Machine]]:
    """Like ``machine_factory``, for machines a whole module shares (one boot for many tests);
    any failing test of the module keeps their logs. Stopped after the module's last test."""
    yield from _machines(request, keel_run, tmp_path_factory.mktemp("module-machines"))


def _record_boot(request: pytest.FixtureRequest, machine: Machine, seconds: float) -> None:
    """The boot time, and any stalled boot given up on the way, in the test's report."""
    request.node.user_properties.append((f"boot_to_ssh_{machine.name}", round(seconds, 1)))
    for why in machine.stalled_boots:
        request.node.user_properties.append((f"stalled_boot_{machine.name}", why))


def boot_and_gate(machine: Machine, request: pytest.FixtureRequest | None = None) -> Machine:
    """Start ``machine``, wait for SSH, run the gate; record the boot time."""
    machine.start()
    seconds = machine.wait_for_ssh()
    if request is not None:
        _record_boot(request, machine, seconds)
    run_gate(machine)
    return machine


@pytest.fixture
def machine(
    request: pytest.FixtureRequest,
    machine_factory: Callable[..., Machine],
    keel_image: Path,
) -> Machine:
    """A machine of the default image, booted and through the gate."""
    return boot_and_gate(machine_factory("machine", image=keel_image), request)


@pytest.fixture
def keel_host(machine: Machine) -> Any:
    """The testinfra host of ``machine`` (``paramiko://core@127.0.0.1:PORT``, sudo)."""
    return machine.host


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, keel_run: HarnessRun, keel_image: Path, tmp_path: Path
) -> Generator[Callable[..., Cluster], None, None]:
    """``cluster(n, image=None, gate=True)``: n machines on a private segment, booted."""
    made: list[Cluster] = []

    def make(size: int, image: Path | None = None, gate: bool = True) -> Cluster:
        state = tmp_path / f"cluster{len(made) + 1}"
        built = Cluster(
            size, state,
            lambda name, i: keel_run.config(name, machines=size, image=image or keel_image),
            segment_id=len(made) + 1,
        )  # fmt: skip
        made.append(built)
        for m in built:
            _track(request, m)
        built.start()
        for m in built:
            _record_boot(request, m, m.wait_for_ssh())
        if gate:
            for m in built:
                run_gate(m)
        return built

    yield make
    for built in made:
        built.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Mark harness faults, and keep the machines' logs of any failed phase."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(HarnessError):
        report.keel_harness_fault = True  # type: ignore[attr-defined]
    elif call.excinfo is not None and call.excinfo.errisinstance((GateFailure, CommandFailed)):
        report.keel_machine_failure = True  # type: ignore[attr-defined]
    # the test's own machines, then those its module or session shares
    machines = [m for node in reversed(item.listchain()) for m in node.stash.get(MACHINES, [])]
    if report.failed and machines:
        start = time.monotonic()
        folder = artifacts.test_dir(_artifacts_root(item.config), item.nodeid)
        artifacts.collect(machines, folder)
        report.sections.append(
            ("keel artifacts", f"{folder} (collected in {time.monotonic() - start:.1f} s)")
        )
        report.keel_artifacts = str(folder)  # type: ignore[attr-defined]
    return report


def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, str] | None:
    """A harness fault in a test's body counts as an error, like a fixture error; a machine
    that fails the gate while a fixture boots it counts as a failure, like a failed assert."""
    if report.when == "call" and getattr(report, "keel_harness_fault", False):
        return "error", "E", "ERROR (harness)"
    if report.when == "setup" and getattr(report, "keel_machine_failure", False):
        return "failed", "F", "FAILED (gate)"
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print where failed tests left their machines' logs (also those from xdist workers)."""
    folders: list[str] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            folder = getattr(report, "keel_artifacts", None)
            if folder and folder not in folders:
                folders.append(folder)
    if folders:
        terminalreporter.section("keel artifacts")
        for folder in folders:
            terminalreporter.write_line(f"machine logs: {folder}")
    stalls = dict.fromkeys(  # each phase's report carries the test's properties so far
        (report.nodeid, value)
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name.startswith("stalled_boot_")
    )
    if stalls:
        terminalreporter.section("keel: stalled boots, started again")
        for nodeid, why in stalls:
            terminalreporter.write_line(f"{nodeid}: {why}")
