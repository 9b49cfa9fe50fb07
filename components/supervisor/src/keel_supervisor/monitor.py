"""The monitor: one small process per container, like conmon.

It is the container's parent. It runs the runtime (``run --detach``) as a *child
subreaper*, so the container's first process is re-parented to it and its exit status
can be collected with ``waitpid``; it copies the container's stdout and stderr into the
log, serves published ports, runs health checks, applies the restart policy with
back-off, and writes everything it learns to ``status.json``. Because each container has
its own monitor in its own session, the supervisor daemon can stop, crash or upgrade
without taking any container down.

It imports only the standard library and Keel's small helpers, to start fast: its
start-up is part of the container's start latency.

Run as ``python -m keel_supervisor.monitor CONTAINER_DIR [READY_FD]``, or started ahead as a
spare (``--spare READY_FD``) that reads the directory from its standard input. SIGTERM asks
it to stop the container (``stop-request.json`` may give the signal and timeout).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from keel_supervisor import cgroups, logs, policy
from keel_supervisor.proxy import PortForwarder
from keel_supervisor.state import ContainerDir, read_json

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Adopt orphaned descendants (the container's init, once the runtime exits)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def exit_code(wait_status: int) -> int:
    """Shell convention: the exit code, or 128 + signal number."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Monitor:
    """Runs one container until it ends for good (by policy, or because it was stopped)."""

    def __init__(self, directory: Path, ready_fd: int | None = None) -> None:
        self.dir = ContainerDir(directory.parent.parent, directory.name)
        self.spec: dict[str, Any] = read_json(self.dir.monitor_file)
        self.ready_fd = ready_fd
        self.lock = threading.Lock()
        self.status = self.dir.status()
        self.stop_requested = threading.Event()
        self.unhealthy_kill = False
        self.writer = logs.LogWriter(
            self.dir.logs, max_size=self.spec["log_max_size"], max_files=self.spec["log_max_files"]
        )
        self.proxies: list[PortForwarder] = []
        self.pumps: list[threading.Thread] = []

    # -- status --------------------------------------------------------------------------
    def update(self, **changes: Any) -> None:
        """Change fields of the status and write it out."""
        with self.lock:
            for key, value in changes.items():
                setattr(self.status, key, value)
            self.dir.save_status(self.status)

    def signal_ready(self, message: str) -> None:
        """Tell the supervisor (once) that the container runs, or why it does not."""
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, message.encode() or b"ok")
            os.close(self.ready_fd)
        except OSError:
            pass
        self.ready_fd = None

    # -- runtime -------------------------------------------------------------------------
    def runtime(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run the OCI runtime with our state directory."""
        argv = [*self.spec["runtime_argv"], "--root", self.spec["runtime_root"], *args]
        return subprocess.run(argv, check=False, **kwargs)

    def start_container(self) -> int:
        """Create and start the container; returns its init's pid."""
        cid = self.dir.id
        pid_file = self.dir.path / "init.pid"
        pid_file.unlink(missing_ok=True)
        if (Path(self.spec["runtime_root"]) / cid).exists():  # leftovers of a crash
            self.runtime("delete", "--force", cid, capture_output=True)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        log_file = self.dir.path / "runtime.log"
        # ``run --detach`` is one call; runtimes that may reap a container which exits
        # before they do (crun) get ``create`` (the process waits) and then ``start``, so
        # that the process is ours to wait for by the time it can exit.
        two_step = bool(self.spec.get("create_then_start"))
        try:
            proc = self.runtime(
                "--log",
                str(log_file),
                "--log-format",
                "json",
                *(["create"] if two_step else ["run", "--detach"]),
                "--pid-file",
                str(pid_file),
                "--bundle",
                str(self.dir.bundle),
                cid,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
            )
        finally:
            os.close(out_w)
            os.close(err_w)
        # Started by run() once the supervisor was told (starting threads takes a while);
        # the pipes hold what the container writes meanwhile.
        self.pumps = [
            threading.Thread(target=logs.pump, args=(fd, stream, self.writer), daemon=True)
            for fd, stream in ((out_r, "stdout"), (err_r, "stderr"))
        ]
        if proc.returncode == 0 and two_step:
            proc = self.runtime(
                "--log",
                str(log_file),
                "--log-format",
                "json",
                "start",
                cid,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
        if proc.returncode != 0:
            raise RuntimeError(self.runtime_error(log_file, proc.returncode))
        return int(pid_file.read_text().strip())

    def start_pumps(self) -> None:
        """Start copying the container's output into the log (once per start)."""
        for pump in self.pumps:
            if pump.ident is None:
                pump.start()

    def runtime_error(self, log_file: Path, code: int) -> str:
        """The runtime's own error message from its JSON log."""
        messages = []
        try:
            for raw in log_file.read_text().splitlines():
                entry = json.loads(raw)
                if entry.get("level") in ("error", "fatal"):
                    messages.append(str(entry.get("msg", "")))
        except (OSError, ValueError):
            pass
        detail = messages[-1] if messages else "see the container's logs"
        return f"runtime exited {code}: {detail}"

    def wait_container(self, pid: int) -> int:
        """Wait for the container's init; handle stop requests meanwhile."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone and reaped by someone else: status unknown
            return 255
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            stop_sent_at: float | None = None
            while True:
                if poller.poll(100):
                    break
                if self.stop_requested.is_set():
                    now = time.monotonic()
                    request = read_json(self.dir.stop_file) or {}
                    timeout = float(request.get("timeout", self.spec["stop_timeout"]))
                    if stop_sent_at is None:
                        sig = str(request.get("signal", self.spec["stop_signal"]))
                        self.runtime("kill", self.dir.id, sig, capture_output=True)
                        stop_sent_at = now
                    elif now - stop_sent_at >= timeout:
                        self.runtime("kill", self.dir.id, "KILL", capture_output=True)
                        # Also straight to the init: it works when the runtime cannot (its
                        # state lost), and the init's death ends its whole pid namespace.
                        with contextlib.suppress(ProcessLookupError):
                            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        stop_sent_at = float("inf")  # KILL sent once
        finally:
            os.close(pidfd)
        try:
            _, wait_status = os.waitpid(pid, 0)
        except ChildProcessError:  # the runtime reaped it before it became ours
            self.writer.write("stderr", "keel: the container's exit status was lost\n")
            return 255
        return exit_code(wait_status)

    # -- health --------------------------------------------------------------------------
    def health_loop(self, run_done: threading.Event, started: float) -> None:
        """Run the health check every interval while this run of the container lasts."""
        check = self.spec["health"]
        tracker = policy.HealthTracker(check["retries"], check["start_period"], started)
        self.update(health="starting")  # the log keeps the last checks across restarts
        while not run_done.wait(check["interval"]):
            begun = time.time()
            try:
                proc = self.runtime(
                    "exec",
                    self.dir.id,
                    *check["test"],
                    capture_output=True,
                    timeout=check["timeout"],
                )
                ok, output = proc.returncode == 0, (proc.stdout + proc.stderr)[-512:]
                code = proc.returncode
            except subprocess.TimeoutExpired:
                ok, output, code = False, b"health check timed out", -1
            if run_done.is_set():
                return
            state = tracker.record(ok, time.time())
            entry = {
                "start": begun,
                "end": time.time(),
                "exit_code": code,
                "output": output.decode("utf-8", "replace"),
            }
            with self.lock:
                self.status.health_log = [*self.status.health_log[-4:], entry]
            self.update(health=state)
            if state == "unhealthy" and self.spec["restart"]["name"] != "no":
                self.unhealthy_kill = True
                self.writer.write("stderr", "keel: health check failing: killing the container\n")
                self.runtime("kill", self.dir.id, "KILL", capture_output=True)
                return

    # -- main loop -----------------------------------------------------------------------
    def open_ports(self) -> None:
        """Listen on every published port before the first start."""
        for port in self.spec["ports"]:
            forwarder = PortForwarder(
                (port["host_ip"], port["host_port"]), (port["container_ip"], port["container_port"])
            )
            forwarder.start()
            self.proxies.append(forwarder)

    def run(self) -> int:
        """Start, wait, restart by policy; returns the monitor's exit status."""
        restart = self.spec["restart"]
        attempt = 0
        self.update(monitor_pid=os.getpid(), stopped=False, error="")
        try:
            self.open_ports()
        except OSError as exc:
            message = f"cannot publish port: {exc}"
            self.update(state="exited", error=message, exit_code=None)
            self.signal_ready(message)
            return 1
        while True:
            started = time.time()
            try:
                pid = self.start_container()
            except (RuntimeError, OSError, ValueError) as exc:
                self.update(state="exited", error=str(exc), finished_at=time.time(), pid=0)
                self.signal_ready(str(exc))
                self.start_pumps()  # the runtime's own complaints go to the log
                code = 127
            else:
                self.update(
                    state="running",
                    pid=pid,
                    started_at=started,
                    exit_code=None,
                    oom_killed=False,
                    health="",
                    error="",
                )
                self.signal_ready("ok")
                self.start_pumps()
                run_done = threading.Event()
                if self.spec["health"]:
                    threading.Thread(
                        target=self.health_loop, args=(run_done, started), daemon=True
                    ).start()
                code = self.wait_container(pid)
                run_done.set()
                for pump in self.pumps:  # the last lines reach the log before the exit is told
                    pump.join(2.0)
                ooms = cgroups.memory_events(self.spec["cgroups_path"])
                self.runtime("delete", "--force", self.dir.id, capture_output=True)
                cgroups.prune(self.spec["cgroups_path"])
                self.update(
                    state="exited",
                    pid=0,
                    exit_code=code,
                    finished_at=time.time(),
                    oom_killed=bool(ooms),
                )
            ending = self.stop_requested.is_set()
            if time.time() - started >= policy.STABLE_AFTER:
                attempt = 0
            if not policy.should_restart(
                restart["name"], restart["max_retries"], code, self.status.restarts, stopped=ending
            ):
                self.end(ending)
                return 0
            self.update(state="restarting", restarts=self.status.restarts + 1)
            if self.stop_requested.wait(policy.backoff(attempt)):
                self.end(ending=True)
                return 0
            attempt += 1
            self.unhealthy_kill = False

    def end(self, ending: bool) -> None:
        """Record the end of the container for good.

        ``ending``: the monitor was asked to stop (SIGTERM). Only a user's stop (``keel
        stop`` writes the stop request first) counts as *stopped*, which ``unless-stopped``
        remembers; a SIGTERM without one is the node shutting down (systemd's final kill
        reaches monitors), after which the policy must bring the container back at boot.
        """
        if not ending:
            self.update(state="exited", stopped=False)
        elif self.dir.stop_file.exists():
            self.update(state="stopped", stopped=True)
        else:
            self.update(state="exited", stopped=False, error="stopped with the node (SIGTERM)")

    def close(self) -> None:
        """Release ports and the log."""
        for forwarder in self.proxies:
            forwarder.close()
        self.writer.close()


def wait_for_work() -> Path | None:
    """As a *spare* monitor: wait (imports done) for the directory of a container to run.

    The supervisor keeps one spare started ahead of time, so that a container's start
    does not wait for an interpreter to start. End of input (the supervisor went away)
    means there is no work.
    """
    line = sys.stdin.readline().strip()
    if not line:
        return None
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    return Path(line)


def main(argv: list[str]) -> int:
    """Entry point: ``monitor DIR [READY_FD]`` or ``monitor --spare READY_FD``."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    become_subreaper()  # before waiting for work: a spare has no children yet
    # Never hand systemd's socket to the runtime: runc/crun would wait for the container
    # to send READY=1 (sd_notify proxying) before `run --detach` returns.
    os.environ.pop("NOTIFY_SOCKET", None)
    if argv[0] == "--spare":
        found = wait_for_work()
        if found is None:
            return 0
        directory = found
    else:
        directory = Path(argv[0])
    ready_fd = int(argv[1]) if len(argv) > 1 else None
    os.chdir(directory)  # how the supervisor recognises the monitor of a container
    log_fd = os.open(directory / "monitor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    monitor = Monitor(directory, ready_fd)
    signal.signal(signal.SIGTERM, lambda *_: monitor.stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: monitor.stop_requested.set())
    try:
        return monitor.run()
    finally:
        monitor.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
