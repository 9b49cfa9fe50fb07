"""Helpers for tests of the supervisor and of code that runs containers (a small test kit).

``make_busybox_rootfs`` builds a one-layer image from Debian's busybox-static, enough to
run shells, ``httpd`` and ``nc`` in real containers without an image registry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from keel_supervisor.model import ContainerConfig

BUSYBOX = Path("/bin/busybox")


def make_busybox_rootfs(target: Path) -> Path:
    """A one-layer image: static busybox, its applets as links, a passwd and group file."""
    (target / "bin").mkdir(parents=True)
    for name in ("etc", "tmp", "proc", "sys", "dev", "root", "www"):
        (target / name).mkdir()
    shutil.copy2(BUSYBOX, target / "bin/busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", target / "bin" / applet)
    (target / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (target / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (target / "www/index.html").write_text("hello from keel\n")
    return target


def wait_for(
    predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition"
) -> object:
    """Poll ``predicate`` until it returns something true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def busybox(rootfs: Path, *command: str, **settings: object) -> ContainerConfig:
    """A container of the busybox fixture running ``command``."""
    return ContainerConfig.model_validate(
        {
            "image": str(rootfs),
            "rootfs": True,
            "command": list(command),
            "network": "none",
            **settings,
        }
    )


class DaemonProcess:
    """A real supervisor daemon (``keel container daemon``) in a temporary directory.

    ``keel(...)`` runs the CLI against it; ``restart()`` kills it the hard way and starts
    a new one on the same state, as a crash or an upgrade would.
    """

    def __init__(self, base: Path, *, bridge: str, subnet: str, etcd: str | None = None) -> None:
        self.base = base
        self.socket = base / "run" / "supervisor.sock"
        self.apps = base / "apps"
        self.apps.mkdir(parents=True, exist_ok=True)
        self.config = base / "supervisor.yaml"
        lines = [
            f"root: {base / 'state'}",
            f"run_dir: {base / 'run'}",
            f"socket: {self.socket}",
            f"apps_dir: {self.apps}",
            f"images: {base / 'images'}",
            f"bridge: {bridge}",
            f"subnet: {subnet}",
            "outbound: false",
            "lease_ttl: 3",
        ]
        if etcd:
            lines.append(f"etcd: [{etcd}]")
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon and wait for its socket to answer."""
        log = open(self.base / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [*self.keel_argv(), "daemon", "--config", str(self.config), "-v"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(lambda: self.keel("ps", check=False).returncode == 0, what="the daemon's socket")

    def keel_argv(self) -> list[str]:
        """``keel container --socket ...`` in this Python."""
        import sys  # noqa: PLC0415

        return [
            sys.executable,
            "-c",
            "from keel_core.cli import main; main()",
            "container",
            "--socket",
            str(self.socket),
            "--images-root",
            str(self.base / "images"),
        ]

    def keel(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one ``keel container`` command; fails the test on error when ``check``."""
        proc = subprocess.run(
            [*self.keel_argv(), *args], capture_output=True, text=True, timeout=120, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"keel container {' '.join(args)} failed: {proc.stderr}")
        return proc

    def kill(self) -> None:
        """SIGKILL the daemon (containers must live on)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> None:
        """SIGTERM the daemon and wait for it."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def restart(self) -> None:
        """Kill and start again on the same state."""
        self.kill()
        self.start()
