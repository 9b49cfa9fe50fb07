"""Fixtures for the supervisor's tests: a busybox root filesystem and a supervisor on it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel_core.testing import free_port
from keel_supervisor.network import Bridge
from keel_supervisor.supervisor import Supervisor
from keel_supervisor.testing import BUSYBOX, DaemonProcess, make_busybox_rootfs, wait_for


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only busybox layer shared by every test of the session."""
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def host_root() -> None:
    """Skip unless we are root with runc (host tests)."""
    if os.geteuid() != 0 or shutil.which("runc") is None:
        pytest.skip("host tests need root and runc")


@pytest.fixture
def supervisor(host_root: None, tmp_path: Path, busybox_rootfs: Path) -> Iterator[Supervisor]:
    """A supervisor with its own state and runtime directories; removes every container after."""
    sup = Supervisor(
        tmp_path / "state",
        run_dir=tmp_path / "run",
        bridge=Bridge(
            name=f"kt{os.getpid() % 100000}",
            subnet=_subnet(),
            state_dir=tmp_path / "state" / "network",
            outbound=False,
        ),
    )
    yield sup
    for cid in sup.ids():
        with contextlib.suppress(Exception):
            sup.remove(cid, force=True)
    sup.bridge.remove()
    leftover = subprocess.run(
        ["runc", "--root", str(tmp_path / "run" / "runtime" / "runc"), "list", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert not leftover, f"runc containers survived the test: {leftover}"


def _subnet() -> str:
    """A /24 in 10.201-250.x.0 chosen by pid, so parallel test runs don't collide."""
    pid = os.getpid()
    return f"10.{201 + pid % 50}.{(pid // 50) % 256}.0/24"


@pytest.fixture
def daemon(host_root: None, tmp_path: Path) -> Iterator[DaemonProcess]:
    """A running supervisor daemon; every container and the bridge are removed after."""
    proc = DaemonProcess(tmp_path, bridge=f"kd{os.getpid() % 100000}", subnet=_subnet())
    yield from _run_daemon(proc, tmp_path)


def _run_daemon(proc: DaemonProcess, tmp_path: Path) -> Iterator[DaemonProcess]:
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        sup = Supervisor(
            tmp_path / "state",
            run_dir=tmp_path / "run",
            bridge=Bridge(
                proc_bridge(proc), _subnet(), tmp_path / "state" / "network", outbound=False
            ),
        )
        seen: list[str] = []  # what each container was, for the message below
        for cid in sup.ids():
            try:
                cdir = sup.resolve(cid)
                status = cdir.status()
                seen.append(
                    f"{cid[:12]}: {status.state}, restarts {status.restarts}, monitor "
                    f"{status.monitor_pid} {'alive' if sup.monitor_alive(cdir) else 'gone'}"
                )
                sup.remove(cid, force=True)
            except Exception as exc:  # reported if a container survives
                seen.append(f"{cid[:12]}: rm -f failed: {exc!r}")
        sup.bridge.remove()
        runc_root = tmp_path / "run" / "runtime" / "runc"
        leftover = subprocess.run(
            ["runc", "--root", str(runc_root), "list", "-q"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert not leftover, f"runc containers survived the test: {leftover}; before rm: {seen}"


def proc_bridge(proc: DaemonProcess) -> str:
    """The bridge name written in the daemon's config."""
    for line in proc.config.read_text().splitlines():
        if line.startswith("bridge: "):
            return line.split(": ", 1)[1]
    raise AssertionError("no bridge in the daemon config")


@pytest.fixture
def etcd(host_root: None, tmp_path: Path) -> Iterator[str]:
    """Debian's real etcd on free loopback ports; yields its client endpoint host:port."""
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("etcd-server and etcd-client are not installed")
    client, peer = free_port(), free_port()
    log = open(tmp_path / "etcd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            "etcd",
            "--name",
            "t",
            "--data-dir",
            str(tmp_path / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{client}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"t=http://127.0.0.1:{peer}",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    endpoint = f"127.0.0.1:{client}"
    try:
        wait_for(lambda: etcdctl(endpoint, "endpoint", "health").returncode == 0, what="etcd")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def etcdctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real etcdctl (v3 API) against ``endpoint``."""
    return subprocess.run(
        ["etcdctl", "--endpoints", endpoint, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
        check=False,
    )


@pytest.fixture
def daemon_with_etcd(host_root: None, tmp_path: Path, etcd: str) -> Iterator[DaemonProcess]:
    """A daemon that registers services in the ``etcd`` fixture."""
    proc = DaemonProcess(tmp_path, bridge=f"ke{os.getpid() % 100000}", subnet=_subnet(), etcd=etcd)
    yield from _run_daemon(proc, tmp_path)
