"""Make sure no QEMU (or switch) process outlives the run that started it.

Every child the harness starts goes through :func:`spawn`: it gets its own process group
(so a terminal's Ctrl-C reaches only the harness, which then stops it in order), a
parent-death signal (so it dies even if the harness is killed with SIGKILL), and an entry
in a registry that an ``atexit`` hook empties. SIGTERM and SIGHUP unwind the program as
Ctrl-C does (KeyboardInterrupt), so fixtures and ``finally`` blocks clean up on the way out.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

_PR_SET_PDEATHSIG = 1
_live: dict[int, subprocess.Popen[bytes]] = {}
_lock = threading.Lock()
_installed = False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    argv: Sequence[str],
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
    cwd: Path | None = None,
    foreground: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a reaped child: own process group, killed when we die.

    ``foreground`` keeps the child in the terminal's process group (the interactive boot
    command, where QEMU owns the console); it is still registered and killed at exit.
    """
    install_handlers()
    proc = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        start_new_session=not foreground,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, safe after fork
    )
    with _lock:
        _live[proc.pid] = proc
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 3.0) -> int:
    """Stop ``proc`` and its process group: SIGTERM, then SIGKILL after ``grace`` s."""
    try:
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode
    finally:
        with _lock:
            _live.pop(proc.pid, None)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` at once (a power cut) and reap it."""
    try:
        if proc.poll() is None:
            _signal(proc, signal.SIGKILL)
            proc.wait(10)
    finally:
        with _lock:
            _live.pop(proc.pid, None)


def forget(proc: subprocess.Popen[bytes]) -> None:
    """Drop a child that exited by itself from the registry."""
    with _lock:
        _live.pop(proc.pid, None)


def live() -> list[int]:
    """Pids of children still registered (for tests and diagnostics)."""
    with _lock:
        return [pid for pid, p in _live.items() if p.poll() is None]


def stop_all() -> None:
    """Stop every registered child; called at exit and on fatal signals."""
    with _lock:
        procs = list(_live.values())
    for proc in procs:
        with contextlib.suppress(Exception):
            stop(proc, grace=1.0)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        if pgid == proc.pid:
            os.killpg(pgid, sig)
        else:
            os.kill(proc.pid, sig)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C does: finally blocks and fixtures stop their machines and remove
    # their folders, pytest ends the session, and the atexit hook stops whatever is left.
    # (Stopping children right here could block: the main thread may hold a child's
    # wait lock.)
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install_handlers() -> None:
    """Register the atexit hook and SIGTERM/SIGHUP handlers once (main thread only).

    SIGINT is left to Python: it raises KeyboardInterrupt, pytest unwinds the fixtures
    (which stop their machines) and the atexit hook catches whatever is left.
    """
    global _installed  # noqa: PLW0603 - one process-wide registration
    if _installed:
        return
    _installed = True
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)
