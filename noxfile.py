"""Keel's sessions. Run through ``./dev nox -s NAME`` (or ``nox`` in .venv).

``nox -R`` reuses the session virtualenvs without reinstalling anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "unit"]
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
CONSTRAINTS = ["-c", str(ROOT / "constraints.txt")]
TEST_DEPS = [
    "pytest",
    "pytest-xdist",
    "pytest-timeout",
    "hypothesis",
    "pytest-virtualenv",
    "uv",
    "aetcd",  # host tests: a third-party etcd client library against keel-store
    "prometheus-client",  # tests: an independent parser for /metrics (not used by the store)
]
LINT_DEPS = ["ruff", "mypy", "types-PyYAML", "nox"]
SIM_SEEDS_CI = "500"


def local_distributions() -> list[Path]:
    """Every Keel distribution in the tree (core first), found by its pyproject.toml."""
    found = [
        p.parent
        for pattern in (
            "components/*/pyproject.toml",
            "platforms/*/pyproject.toml",
            "harness/pyproject.toml",
        )
        for p in sorted(ROOT.glob(pattern))
    ]
    return sorted(found, key=lambda p: (p.name != "core", str(p)))


def install(session: nox.Session, *extra: str) -> None:
    """Install all Keel distributions (editable) plus ``extra``, pinned by constraints.txt.

    The pins hold for the build backends too (uv and pip build in isolated environments
    that ``-c`` does not reach): keel-store's build generates its gRPC stubs with
    grpcio-tools, and stubs from a grpcio-tools newer than the pinned grpcio refuse to
    load ("generated code ... depends on grpcio>=1.85.4").
    """
    args = [arg for d in local_distributions() for arg in ("-e", str(d))]
    pins = str(ROOT / "constraints.txt")
    session.install(
        *CONSTRAINTS, *args, *extra, env={"UV_BUILD_CONSTRAINT": pins, "PIP_CONSTRAINT": pins}
    )


def pytest(session: nox.Session, marker: str, *args: str) -> None:
    """Run pytest over the whole tree for the tests selected by ``marker``."""
    session.run(
        "pytest",
        "-m",
        marker,
        "-p",
        "no:cacheprovider",
        *args,
        *session.posargs,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )


def lint_all(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    dists = [
        *local_distributions(),
        *sorted(p.parent for p in ROOT.glob("examples/*/pyproject.toml")),
    ]
    sources = [str(d / "src") for d in dists if (d / "src").is_dir()]
    session.run("mypy", *sources, "noxfile.py")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy over every distribution."""
    install(session, *LINT_DEPS)
    lint_all(session)


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """Fast tests: no VM, no long-running real processes."""
    install(session, *TEST_DEPS)
    pytest(session, "not host and not vm", "-n", "auto")


@nox.session(python=PYTHON)
def sim(session: nox.Session) -> None:
    """The Raft core under seeded faults: ``nox -s sim -- --seeds 10000``."""
    install(session)
    args = session.posargs or ["--seeds", SIM_SEEDS_CI]
    session.run("python", "-m", "keel_store.sim", *args)


@nox.session(python=PYTHON)
def host(session: nox.Session) -> None:
    """Integration tests with real processes on this machine (store cluster, runc)."""
    install(session, *TEST_DEPS)
    pytest(session, "host and not vm")


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """Every VM test: builds images, boots them under QEMU, checks them over SSH."""
    install(session, *TEST_DEPS)
    pytest(session, "vm", "-n", str(os.cpu_count() or 1))


@nox.session(python=PYTHON)
def gate(session: nox.Session) -> None:
    """What a release must pass: every machine boots (BIOS and UEFI) and passes the gate."""
    install(session, *TEST_DEPS)
    pytest(session, "gate", "-n", str(os.cpu_count() or 1))


@nox.session(python=PYTHON)
def smoke(session: nox.Session) -> None:
    """The VM subset CI runs: build, boot, gate, one cluster ping, the [store, supervisor] image.

    Sequential on purpose: the 3-machine cluster already uses every core.
    """
    install(session, *TEST_DEPS)
    pytest(session, "smoke")


@nox.session(python=PYTHON)
def ci(session: nox.Session) -> None:
    """Everything CI runs, in one virtualenv: unit, simulation, host, VM smoke, lint."""
    install(session, *TEST_DEPS, *LINT_DEPS)
    pytest(session, "not host and not vm", "-n", "auto")
    session.run("python", "-m", "keel_store.sim", "--seeds", SIM_SEEDS_CI)
    pytest(session, "host and not vm")
    pytest(session, "smoke")
    lint_all(session)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against the real peer in the same run: ``nox -s bench -- store``."""
    install(session, *TEST_DEPS)
    session.run("python", str(ROOT / "benchmarks" / "run.py"), *session.posargs)


@nox.session(python=PYTHON)
def image(session: nox.Session) -> None:
    """Build the default image (images/keel.yaml) into out/."""
    install(session)
    session.run("keel", "build", str(ROOT / "images" / "keel.yaml"), *session.posargs)


@nox.session(python=PYTHON)
def boot(session: nox.Session) -> None:
    """Build the default image and boot it under QEMU, console on this terminal."""
    install(session)
    session.run("keel", "build", str(ROOT / "images" / "keel.yaml"))
    # Reuses the build above (content-hash cache); --firmware uefi boots through OVMF.
    session.run(
        "python",
        "-m",
        "keel_harness",
        "boot",
        str(ROOT / "images" / "keel.yaml"),
        *session.posargs,
    )
