"""Each runtime plugin runs the same container the same way (host: runc and crun)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from keel_supervisor import cgroups, logs, runtimes
from keel_supervisor.state import ContainerDir
from keel_supervisor.supervisor import Supervisor
from keel_supervisor.testing import busybox, wait_for

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]


@pytest.mark.parametrize("runtime", ["runc", "crun", "lxc"])
def test_runtime_runs_stops_and_execs(
    runtime: str, host_root: None, tmp_path: Path, busybox_rootfs: Path
) -> None:
    if shutil.which("lxc-execute" if runtime == "lxc" else runtime) is None:
        pytest.skip(f"{runtime} is not installed")
    sup = Supervisor(tmp_path / "state", run_dir=tmp_path / "run", runtime=runtime)
    try:
        done = sup.run(busybox(busybox_rootfs, "sh", "-c", "echo hi from $0; exit 5", runtime))
        cdir = ContainerDir(sup.root, done)
        wait_for(lambda: not sup.monitor_alive(cdir), what="the container to end")
        assert cdir.status().exit_code == 5, cdir.status()
        assert [line.text for line in logs.read(cdir.logs)] == [f"hi from {runtime}\n"]
        assert cdir.record().runtime == runtime

        long = sup.run(busybox(busybox_rootfs, "sleep", "300", resources={"memory": "32m"}))
        proc = sup.exec(long, ["sh", "-c", "echo $((6*7))"])
        assert (proc.returncode, proc.stdout) == (0, b"42\n")
        if cgroups.mode() is not cgroups.CgroupMode.UNIFIED:
            # runc and crun use /keel/<id>; LXC puts its payload one level below.
            tree = Path(f"/sys/fs/cgroup/memory/keel/{long}")
            limits = [int(p.read_text()) for p in tree.rglob("memory.limit_in_bytes")]
            assert 32 << 20 in limits
        sup.stop(long, timeout=0.5)
        # sleep as PID 1 ignores TERM and is KILLed; under LXC, lxc-execute's own init is
        # PID 1 and passes TERM on to sleep, which dies of it (like docker run --init).
        expected = 128 + (15 if runtime == "lxc" else 9)
        assert ContainerDir(sup.root, long).status().exit_code == expected
    finally:
        for cid in sup.ids():
            sup.remove(cid, force=True)
    state_root = tmp_path / "run" / "runtime" / runtime
    command = list(runtimes.lxc().command()) if runtime == "lxc" else [runtime]
    listed = subprocess.run(
        [*command, "--root", str(state_root), "list", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert listed == []
    assert not list(Path("/sys/fs/cgroup").glob(f"*/keel/{done}")), "cgroups left behind"


def test_cgroup_mode_is_detected() -> None:
    mode = cgroups.mode()
    unified = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    assert (mode is cgroups.CgroupMode.UNIFIED) == unified
