"""The daemon and the CLI with real runc: run/ps/logs/exec/stop/rm, ports, health, restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel_core.testing import free_port
from keel_supervisor.testing import DaemonProcess, wait_for

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]


def inspect(daemon: DaemonProcess, ref: str) -> dict:
    return json.loads(daemon.keel("inspect", ref).stdout)[0]


def test_cli_verbs_end_to_end(daemon: DaemonProcess, busybox_rootfs: Path) -> None:
    cid = daemon.keel(
        "run",
        "--rootfs",
        "--name",
        "greeter",
        "--network",
        "none",
        "-e",
        "WHO=keel",
        str(busybox_rootfs),
        "sh",
        "-c",
        'echo "hello $WHO"; sleep 0.2; echo oops >&2; exec sleep 300',
    ).stdout.strip()
    assert len(cid) == 64
    ps = daemon.keel("ps").stdout
    assert "greeter" in ps
    assert "Up " in ps
    wait_for(lambda: "oops" in daemon.keel("logs", "greeter").stderr, what="the output")
    assert daemon.keel("logs", "greeter").stdout == "hello keel\n"
    assert daemon.keel("logs", "--since", "10m", "greeter").stdout == "hello keel\n"
    assert daemon.keel("logs", "--since", "2099-01-01T00:00:00Z", "greeter").stdout == ""
    stamped = daemon.keel("logs", "-t", "greeter").stdout
    assert stamped.endswith("Z hello keel\n")
    logs = daemon.keel("logs", "--tail", "1", "greeter")
    assert (logs.stdout, logs.stderr) == ("", "oops\n")
    done = daemon.keel("exec", "greeter", "sh", "-c", "echo $WHO; exit 3", check=False)
    assert (done.returncode, done.stdout) == (3, "keel\n")
    assert (
        daemon.keel(
            "run", "--rootfs", "--name", "greeter", str(busybox_rootfs), "true", check=False
        ).stderr.count("is in use")
        == 1
    )
    refused = daemon.keel("rm", "greeter", check=False)
    assert refused.returncode != 0
    assert "stop it first or use --force" in refused.stderr
    daemon.keel("stop", "-t", "1", "greeter")
    assert inspect(daemon, "greeter")["status_detail"]["exit_code"] == 137
    assert "greeter" not in daemon.keel("ps").stdout
    assert "Exited (137)" in daemon.keel("ps", "-a").stdout
    daemon.keel("rm", "greeter")
    missing = daemon.keel("logs", "greeter", check=False)
    assert "no container named 'greeter'" in missing.stderr


def test_logs_follow_streams_until_the_container_ends(
    daemon: DaemonProcess, busybox_rootfs: Path
) -> None:
    daemon.keel(
        "run",
        "--rootfs",
        "--name",
        "ticker",
        "--network",
        "none",
        str(busybox_rootfs),
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done",
    )
    followed = daemon.keel("logs", "-f", "ticker")
    assert followed.stdout == "".join(f"tick {i}\n" for i in range(1, 6))


def test_published_port_and_containers_reach_each_other(
    daemon: DaemonProcess, busybox_rootfs: Path
) -> None:
    port = free_port()
    daemon.keel(
        "run",
        "--rootfs",
        "--name",
        "web",
        "-p",
        f"{port}:80",
        str(busybox_rootfs),
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    )
    web_ip = inspect(daemon, "web")["ip"]
    body = wait_for(lambda: _get(f"http://127.0.0.1:{port}/index.html"), what="the web page")
    assert body == b"hello from keel\n"
    daemon.keel("run", "--rootfs", "--name", "client", str(busybox_rootfs), "sleep", "300")
    fetched = daemon.keel("exec", "client", "wget", "-q", "-O", "-", f"http://{web_ip}/index.html")
    assert fetched.stdout == "hello from keel\n"
    # The default route leads to the node: a server on the bridge's address is reachable.
    gateway = web_ip.rsplit(".", 1)[0] + ".1"
    received: list[bytes] = []
    with socket.create_server((gateway, 0)) as server:
        server.settimeout(30)

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                received.append(conn.recv(100))

        thread = threading.Thread(target=serve)
        thread.start()
        port_on_node = server.getsockname()[1]
        daemon.keel("exec", "client", "sh", "-c", f"echo ping | nc {gateway} {port_on_node}")
        thread.join(30)
    assert received == [b"ping\n"]
    daemon.keel("rm", "-f", "web")
    assert _get(f"http://127.0.0.1:{port}/index.html") is None  # the port is closed with it


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.read()
    except OSError:
        return None


def test_unhealthy_container_is_restarted(daemon: DaemonProcess, busybox_rootfs: Path) -> None:
    # Healthy while /tmp/ok exists; the container removes it after a second.
    daemon.keel(
        "run",
        "--rootfs",
        "--name",
        "flaky",
        "--network",
        "none",
        "--restart",
        "always",
        "--health-cmd",
        "test -e /tmp/ok",
        "--health-interval",
        "0.3",
        "--health-retries",
        "2",
        str(busybox_rootfs),
        "sh",
        "-c",
        "touch /tmp/ok; sleep 1; rm /tmp/ok; sleep 300",
    )
    wait_for(lambda: inspect(daemon, "flaky")["health"] == "healthy", what="healthy")
    wait_for(lambda: inspect(daemon, "flaky")["status_detail"]["restarts"] >= 1, what="a restart")
    detail = inspect(daemon, "flaky")["status_detail"]
    assert detail["state"] in ("running", "restarting")
    assert any(entry["exit_code"] != 0 for entry in detail["health_log"])


def test_containers_survive_a_daemon_crash(daemon: DaemonProcess, busybox_rootfs: Path) -> None:
    daemon.keel(
        "run",
        "--rootfs",
        "--name",
        "steady",
        "--network",
        "none",
        str(busybox_rootfs),
        "sleep",
        "300",
    )
    pid = inspect(daemon, "steady")["status_detail"]["pid"]
    daemon.restart()
    assert inspect(daemon, "steady")["status_detail"]["pid"] == pid
    os.kill(pid, 0)
    assert "Up " in daemon.keel("ps").stdout
    daemon.keel("stop", "-t", "0", "steady")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_declarative_app_lifecycle(daemon: DaemonProcess, busybox_rootfs: Path) -> None:
    app = daemon.apps / "echo.yaml"
    app.write_text(
        f"image: {busybox_rootfs}\nrootfs: true\nnetwork: none\n"
        "command: [sh, -c, 'echo v1; exec sleep 300']\n"
    )
    wait_for(lambda: "echo" in daemon.keel("ps").stdout, what="the app to start")
    first = inspect(daemon, "echo")
    assert first["config"]["restart"]["name"] == "unless-stopped"
    # A broken edit is reported and changes nothing.
    app.write_text(f"image: {busybox_rootfs}\nrootfs: true\ncomand: [true]\n")
    wait_for(lambda: "comand" in (daemon.base / "daemon.log").read_text(), what="the error")
    assert (
        f"{app}:3:1: comand: unknown key 'comand'; did you mean 'command'?"
        in (daemon.base / "daemon.log").read_text()
    )
    assert inspect(daemon, "echo")["id"] == first["id"]
    listed = daemon.keel("apps", check=False)
    assert listed.returncode == 1
    assert "echo" in listed.stdout
    assert f"rejected: {app}:3:1: comand: unknown key" in listed.stderr
    # A good edit replaces the container.
    app.write_text(
        f"image: {busybox_rootfs}\nrootfs: true\nnetwork: none\n"
        "command: [sh, -c, 'echo v2; exec sleep 300']\n"
    )

    def replaced() -> bool:
        # Between the old container's removal and the new one's creation, there is none.
        proc = daemon.keel("inspect", "echo", check=False)
        return proc.returncode == 0 and json.loads(proc.stdout)[0]["id"] != first["id"]

    wait_for(replaced, what="the replacement")
    wait_for(lambda: daemon.keel("logs", "echo").stdout == "v2\n", what="v2 output")
    # A reboot: monitors and containers are gone; the daemon brings the app back.
    detail = inspect(daemon, "echo")["status_detail"]
    daemon.kill()
    os.kill(detail["monitor_pid"], signal.SIGKILL)
    os.kill(detail["pid"], signal.SIGKILL)
    daemon.start()
    wait_for(lambda: inspect(daemon, "echo")["state"] == "running", what="the app after reboot")
    assert inspect(daemon, "echo")["status_detail"]["pid"] != detail["pid"]
    # Removing the file removes the container.
    app.unlink()
    wait_for(lambda: "echo" not in daemon.keel("ps", "-a").stdout, what="the app to go")


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """systemd's side of a Type=notify unit: NOTIFY_SOCKET for the daemon started next."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(tmp_path / "notify.sock"))
        server.settimeout(60)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        yield server


def test_under_a_notify_unit_the_daemon_says_ready_and_containers_start(
    notify_socket: socket.socket, daemon: DaemonProcess, busybox_rootfs: Path
) -> None:
    assert notify_socket.recv(100) == b"READY=1"
    # runc given NOTIFY_SOCKET waits for the container itself to notify: `run` would hang
    daemon.keel("run", "--rootfs", "--name", "quiet", "--network", "none",
                str(busybox_rootfs), "sleep", "300")  # fmt: skip
    detail = inspect(daemon, "quiet")["status_detail"]
    assert detail["state"] == "running"
    for pid in (detail["monitor_pid"], detail["pid"]):
        assert b"NOTIFY_SOCKET=" not in Path(f"/proc/{pid}/environ").read_bytes()
    daemon.keel("rm", "-f", "quiet")


def test_a_node_shutdown_is_no_user_stop(daemon: DaemonProcess, busybox_rootfs: Path) -> None:
    """systemd's final SIGTERM at shutdown reaches monitors with no stop request: the
    container ends, is not marked stopped, and unless-stopped brings it back at boot."""
    daemon.keel("run", "--rootfs", "--name", "stays", "--network", "none",
                "--restart", "unless-stopped", "--stop-timeout", "1",
                str(busybox_rootfs), "sleep", "300")  # fmt: skip
    before = inspect(daemon, "stays")["status_detail"]
    daemon.kill()
    os.kill(before["monitor_pid"], signal.SIGTERM)  # what systemd-shutdown sends
    wait_for(lambda: not Path(f"/proc/{before['monitor_pid']}").exists(), what="the monitor")
    wait_for(lambda: not Path(f"/proc/{before['pid']}").exists(), what="the container")
    daemon.start()  # the next boot
    after = wait_for(
        lambda: (d := inspect(daemon, "stays"))["state"] == "running" and d, what="the restart"
    )
    assert isinstance(after, dict)
    assert after["status_detail"]["pid"] != before["pid"]
    assert after["status_detail"]["stopped"] is False
    # a user's stop still counts: not started at the next boot
    daemon.keel("stop", "-t", "1", "stays")
    assert inspect(daemon, "stays")["status_detail"]["stopped"] is True
    daemon.restart()
    assert inspect(daemon, "stays")["state"] == "stopped"
    daemon.keel("rm", "stays")
