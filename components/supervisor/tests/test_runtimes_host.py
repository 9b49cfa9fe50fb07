"""Each runtime plugin runs the same container the same way (host: runc and crun)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from keel_supervisor import cgroups, logs
from keel_supervisor.state import ContainerDir
from keel_supervisor.supervisor import Supervisor
from keel_supervisor.testing import busybox, wait_for

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_runtime_runs_stops_and_execs(
    runtime: str, host_root: None, tmp_path: Path, busybox_rootfs: Path
) -> None:
    if shutil.which(runtime) is None:
        pytest.skip(f"{runtime} is not installed")
    sup = Supervisor(tmp_path / "state", run_dir=tmp_path / "run", runtime=runtime)
    try:
        done = sup.run(busybox(busybox_rootfs, "sh", "-c", "echo hi from $0; exit 5", runtime))
        cdir = ContainerDir(sup.root, done)
        wait_for(lambda: not sup.monitor_alive(cdir), what="the container to end")
        assert cdir.status().exit_code == 5
        assert [line.text for line in logs.read(cdir.logs)] == [f"hi from {runtime}\n"]
        assert cdir.record().runtime == runtime

        long = sup.run(busybox(busybox_rootfs, "sleep", "300", resources={"memory": "32m"}))
        proc = sup.exec(long, ["cat", "/proc/self/cgroup"])
        assert proc.returncode == 0
        assert f"/keel/{long}".encode() in proc.stdout
        sup.stop(long, timeout=0.5)
        assert ContainerDir(sup.root, long).status().exit_code == 137
    finally:
        for cid in sup.ids():
            sup.remove(cid, force=True)
    state_root = tmp_path / "run" / "runtime" / runtime
    listed = subprocess.run(
        [runtime, "--root", str(state_root), "list", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert listed == []


def test_cgroup_mode_is_detected() -> None:
    mode = cgroups.mode()
    unified = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    assert (mode is cgroups.CgroupMode.UNIFIED) == unified
