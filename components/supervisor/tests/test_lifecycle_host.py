"""Container lifecycle with real runc: exit codes, logs, stop, restart policies, OOM (host)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from keel_supervisor import logs
from keel_supervisor.state import ContainerDir
from keel_supervisor.supervisor import Supervisor
from keel_supervisor.testing import busybox, wait_for

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]


def status(sup: Supervisor, cid: str):
    return ContainerDir(sup.root, cid).status()


def test_exit_code_and_logs_recorded(supervisor: Supervisor, busybox_rootfs: Path) -> None:
    cid = supervisor.run(busybox(busybox_rootfs, "sh", "-c", "echo out; echo err >&2; exit 7"))
    cdir = ContainerDir(supervisor.root, cid)
    wait_for(lambda: not supervisor.monitor_alive(cdir), what="the monitor to finish")
    assert status(supervisor, cid).exit_code == 7
    lines = logs.read(ContainerDir(supervisor.root, cid).logs)
    # Order holds within a stream; stdout and stderr are separate pipes, as in docker.
    assert sorted((line.stream, line.text) for line in lines) == [
        ("stderr", "err\n"),
        ("stdout", "out\n"),
    ]
    assert not supervisor.monitor_alive(ContainerDir(supervisor.root, cid))


def test_process_settings_reach_the_container(supervisor: Supervisor, busybox_rootfs: Path) -> None:
    data = busybox_rootfs.parent / "shared"
    data.mkdir(exist_ok=True)
    (data / "note").write_text("from the host\n")
    cid = supervisor.run(
        busybox(
            busybox_rootfs,
            "sh",
            "-c",
            'echo "$GREETING $(id -u):$(id -g) $(pwd)"; cat /data/note;'
            " touch /data/x 2>&1 || echo ro; grep NoNewPrivs /proc/self/status;"
            " touch /bin/y 2>&1 || echo rootfs-ro",
            env={"GREETING": "hi"},
            user="65534:65534",
            workdir="/tmp",
            volumes=[f"{data}:/data:ro"],
            read_only=True,
        )
    )
    wait_for(lambda: status(supervisor, cid).state == "exited", what="the container to exit")
    text = "".join(line.text for line in logs.read(ContainerDir(supervisor.root, cid).logs))
    assert "hi 65534:65534 /tmp\n" in text
    assert "from the host\n" in text
    assert "\nro\n" in text
    assert "NoNewPrivs:\t1" in text
    assert "rootfs-ro" in text
    assert not (data / "x").exists()


def test_stop_kills_after_timeout_when_term_is_ignored(
    supervisor: Supervisor, busybox_rootfs: Path
) -> None:
    # PID 1 without a TERM handler ignores TERM: stop must fall back to KILL.
    cid = supervisor.run(busybox(busybox_rootfs, "sleep", "300", restart="always"))
    supervisor.stop(cid, timeout=1)
    st = status(supervisor, cid)
    assert (st.state, st.exit_code, st.stopped) == ("stopped", 137, True)
    # A handler that exits on TERM ends it at once, with its own exit code.
    supervisor.start(cid)
    other = supervisor.run(
        busybox(busybox_rootfs, "sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done")
    )
    supervisor.stop(other, timeout=20)
    assert status(supervisor, other).exit_code == 42
    supervisor.stop(cid, timeout=0)


def test_stop_kills_even_when_the_runtime_lost_the_container(
    supervisor: Supervisor, busybox_rootfs: Path
) -> None:
    # The runtime's state is gone (a crash, a cleaned /run): `runc kill` fails, yet a stop
    # must end the container, which its monitor reaches through the init's pidfd.
    cid = supervisor.run(busybox(busybox_rootfs, "sleep", "300", restart="always"))
    pid = status(supervisor, cid).pid
    state = supervisor.run_dir / "runtime" / "runc" / cid
    (state / "state.json").rename(state / "state.json.lost")
    supervisor.stop(cid, timeout=0)
    st = status(supervisor, cid)
    assert (st.state, st.exit_code, st.stopped) == ("stopped", 137, True)
    assert not Path(f"/proc/{pid}").exists()
    if (state / "state.json.lost").exists():  # for the teardown's runc delete
        (state / "state.json.lost").rename(state / "state.json")


def test_on_failure_restarts_at_most_n_times(supervisor: Supervisor, busybox_rootfs: Path) -> None:
    cid = supervisor.run(
        busybox(busybox_rootfs, "sh", "-c", "echo run; exit 3", restart="on-failure:2")
    )
    cdir = ContainerDir(supervisor.root, cid)
    wait_for(lambda: not supervisor.monitor_alive(cdir), what="the monitor to give up")
    st = status(supervisor, cid)
    assert (st.state, st.exit_code, st.restarts) == ("exited", 3, 2)
    assert [line.text for line in logs.read(cdir.logs)] == ["run\n"] * 3


def test_always_restarts_a_clean_exit_and_no_does_not(
    supervisor: Supervisor, busybox_rootfs: Path
) -> None:
    always = supervisor.run(busybox(busybox_rootfs, "true", restart="always"))
    never = supervisor.run(busybox(busybox_rootfs, "true"))
    wait_for(lambda: status(supervisor, always).restarts >= 3, what="three restarts")
    wait_for(lambda: status(supervisor, never).state == "exited", what="exit")
    assert status(supervisor, never).restarts == 0


def test_over_memory_limit_is_oom_killed_and_restarted(
    supervisor: Supervisor, busybox_rootfs: Path
) -> None:
    # Fill a tmpfs-free file in memory: sh string doubling until the 16 MiB limit bites.
    hog = 'echo start; x=aaaaaaaaaaaaaaaa; while :; do x="$x$x"; done'
    cid = supervisor.run(
        busybox(
            busybox_rootfs,
            "sh",
            "-c",
            hog,
            restart="on-failure:1",
            resources={"memory": "16m", "pids": 16, "cpus": 0.5},
        )
    )
    cdir = ContainerDir(supervisor.root, cid)
    wait_for(lambda: not supervisor.monitor_alive(cdir), timeout=90, what="OOM kills")
    st = status(supervisor, cid)
    assert st.exit_code == 137
    assert st.oom_killed
    assert st.restarts == 1
    assert [line.text for line in logs.read(cdir.logs)] == ["start\n", "start\n"]


def test_pids_limit_is_enforced(supervisor: Supervisor, busybox_rootfs: Path) -> None:
    script = "for i in $(seq 20); do sleep 60 & done; echo spawned"
    cid = supervisor.run(busybox(busybox_rootfs, "sh", "-c", script, resources={"pids": 8}))
    cdir = ContainerDir(supervisor.root, cid)
    wait_for(lambda: not supervisor.monitor_alive(cdir), what="the container to end")
    lines = logs.read(cdir.logs)
    assert status(supervisor, cid).exit_code == 2  # busybox sh gives up when fork fails
    assert "sh: can't fork: Resource temporarily unavailable\n" in [x.text for x in lines]
    assert "spawned\n" not in [x.text for x in lines]


def test_running_containers_survive_a_new_supervisor(
    supervisor: Supervisor, busybox_rootfs: Path
) -> None:
    cid = supervisor.run(busybox(busybox_rootfs, "sleep", "300", name="keeper"))
    pid = status(supervisor, cid).pid
    again = Supervisor(supervisor.root, run_dir=supervisor.run_dir, bridge=supervisor.bridge)
    assert again.recover() == []
    assert again.resolve("keeper").id == cid
    assert status(again, cid).pid == pid
    os.kill(pid, 0)  # still alive
    proc = again.exec("keeper", ["sh", "-c", "echo $((6*7))"])
    assert (proc.returncode, proc.stdout) == (0, b"42\n")
    again.stop("keeper", timeout=0)


def test_recover_restarts_by_policy_after_the_node_lost_them(
    supervisor: Supervisor, busybox_rootfs: Path
) -> None:
    # As after a reboot: the record says running, but no monitor exists any more.
    keep = supervisor.run(busybox(busybox_rootfs, "sleep", "300", restart="unless-stopped"))
    gone = supervisor.run(busybox(busybox_rootfs, "sleep", "300", restart="no"))
    for cid in (keep, gone):
        st = status(supervisor, cid)
        os.kill(st.monitor_pid, 9)
        supervisor.kill(cid, "KILL")
        wait_for(
            lambda c=cid: not supervisor.monitor_alive(ContainerDir(supervisor.root, c)),
            what="monitor gone",
        )
    again = Supervisor(supervisor.root, run_dir=supervisor.run_dir, bridge=supervisor.bridge)
    assert again.recover() == [keep]
    assert status(again, keep).state == "running"
    assert status(again, gone).state == "exited"


def test_host_network_shares_the_node_loopback(
    supervisor: Supervisor, busybox_rootfs: Path
) -> None:
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                received.append(conn.recv(100))

        thread = threading.Thread(target=serve)
        thread.start()
        port = server.getsockname()[1]
        cid = supervisor.run(
            busybox(busybox_rootfs, "sh", "-c", f"echo hi | nc 127.0.0.1 {port}", network="host")
        )
        thread.join(30)
    assert received == [b"hi\n"]
    cdir = ContainerDir(supervisor.root, cid)
    wait_for(lambda: not supervisor.monitor_alive(cdir), what="the container to end")
    assert status(supervisor, cid).exit_code == 0


def test_named_volume_outlives_its_container(supervisor: Supervisor, busybox_rootfs: Path) -> None:
    writer = supervisor.run(
        busybox(busybox_rootfs, "sh", "-c", "echo kept > /data/file", volumes=["notes:/data"])
    )
    wait_for(
        lambda: not supervisor.monitor_alive(ContainerDir(supervisor.root, writer)),
        what="the writer to end",
    )
    supervisor.remove(writer)
    reader = supervisor.run(busybox(busybox_rootfs, "cat", "/data/file", volumes=["notes:/data"]))
    cdir = ContainerDir(supervisor.root, reader)
    wait_for(lambda: not supervisor.monitor_alive(cdir), what="the reader to end")
    assert [line.text for line in logs.read(cdir.logs)] == ["kept\n"]
    assert (supervisor.root / "volumes" / "notes" / "_data" / "file").read_text() == "kept\n"
