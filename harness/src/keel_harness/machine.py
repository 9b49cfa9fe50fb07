"""A Keel machine under QEMU, driven in the NixOS test driver's vocabulary.

``start`` boots it (asynchronously, like NixOS); every ``wait_*`` goes through
:func:`keel_harness.retry.retry`; commands run as root over SSH. Faults of the harness
(QEMU gone, SSH never up) raise :class:`~keel_harness.errors.HarnessError`; the guest
misbehaving raises :class:`AssertionError` subclasses.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel_core.testing import free_port, process_cpu_seconds
from keel_harness import netwatch, provision, qemu, reaper, ssh, stall
from keel_harness.console import ConsoleLog, find_trouble
from keel_harness.errors import (
    CommandFailed,
    GateFailure,
    GuestStalled,
    HarnessError,
    QemuError,
    SshError,
)
from keel_harness.retry import retry

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 900.0
# Console trouble after which SSH will never come: stop waiting and fail the test at once.
FATAL_TROUBLE = ("kernel panic", "soft lockup", "emergency shell", "rescue mode")


@dataclass
class PrivateLink:
    """This machine's place on a private segment: the switch socket, its MAC and address."""

    socket: Path
    mac: str
    address: str


@dataclass
class MachineConfig:
    """What to boot and with what resources. ``image`` or ``kernel`` must be set."""

    name: str
    image: Path | None = None
    """Base disk (qcow2 or raw); the machine boots an overlay, never the image itself."""
    firmware: str = "bios"
    kernel: Path | None = None
    initrd: Path | None = None
    kernel_args: Sequence[str] = ()
    memory_mib: int = 1024
    cpus: int = 1
    accel: str = "tcg"
    key: ssh.KeyPair | None = None
    """Without a key the machine gets no SSH port forward (console-only guests)."""
    private: PrivateLink | None = None
    extra_qemu: Sequence[str] = ()
    boot_timeout: float = 600.0
    stall_quiet_seconds: float = stall.QUIET_SECONDS
    """Console silence during a boot after which the vCPUs are sampled for a stall
    (:mod:`keel_harness.stall`); 0 turns the check off."""
    user: str = "core"
    index: int = 0
    """The machine's number in its run: makes its MACs unique."""
    extra_config: dict[str, Any] = field(default_factory=dict)
    forwards: Sequence[int] = ()
    """Guest TCP ports reachable from the host: each gets a free port on the host's
    127.0.0.1, forwarded to the guest's address on the user network (not its loopback);
    :meth:`Machine.forwarded_port` says which."""


class Machine:
    """One QEMU machine with its own state directory (overlay, console, QMP, config)."""

    def __init__(self, config: MachineConfig, state_dir: Path) -> None:
        self.config = config
        self.name = config.name
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.console = ConsoleLog(state_dir / "console.log")
        self.qemu_log = state_dir / "qemu.log"
        self.ssh_port = 0
        self.forwarded: dict[int, int] = {}
        """Guest port -> host port on 127.0.0.1, for ``config.forwards`` (set by start)."""
        self.boot_seconds: float | None = None
        """Seconds from the last start until SSH answered (None until then)."""
        self.stalled_boots: list[str] = []
        """Why each stalled first boot was given up and started again (see
        :mod:`keel_harness.stall`); empty normally."""
        self._ever_up = False
        """SSH answered once: later boots run on a disk the test has changed."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: ssh.Session | None = None
        self._started_at = 0.0
        self._host: Any = None
        self._user_mac = qemu.mac_address(0, config.index)
        self._user_dump = state_dir / "user-net.pcap"
        self._dump_mark = 0
        """Where the current boot's packets start in ``_user_dump`` (QEMU rewrites it)."""

    # ----- lifecycle -------------------------------------------------------------------
    @property
    def started_at(self) -> float:
        """``time.monotonic()`` when QEMU was last started (or the last reboot began)."""
        return self._started_at

    def cpu_seconds(self) -> float:
        """Host CPU time QEMU has used since it started (all vCPUs): the cost of a boot,
        less sensitive than its wall time to what else runs on the host."""
        if self._proc is None:
            return 0.0
        try:
            return process_cpu_seconds(self._proc.pid)
        except OSError:
            return 0.0

    @property
    def is_running(self) -> bool:
        """Whether this machine's QEMU process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start QEMU and return at once; use :meth:`wait_for_ssh` to wait for the boot."""
        if self.is_running:
            return
        spec = self._spec()
        for attempt in range(3):
            self.console.mark()
            self._launch(spec)
            time.sleep(0.3)
            if self.is_running or "host forwarding rule" not in self._qemu_stderr():
                break
            # Someone took one of our "free" ports between bind and QEMU: pick others.
            log.info("%s: a forwarded port was taken, retrying (%d)", self.name, attempt)
            spec = self._spec()
        self._check_alive("QEMU exited right after start")

    def _spec(self) -> qemu.QemuSpec:
        cfg = self.config
        nics: list[qemu.Nic] = []
        if cfg.key is not None or cfg.image is not None:
            self.ssh_port = free_port() if cfg.key is not None else 0
            self.forwarded = {guest: free_port() for guest in cfg.forwards}
            nics.append(
                qemu.Nic(
                    "user",
                    self._user_mac,
                    ssh_port=self.ssh_port,
                    forwards=tuple((host, guest) for guest, host in self.forwarded.items()),
                    dump=self._user_dump,
                )
            )
        if cfg.private is not None:
            nics.append(qemu.Nic("vde", cfg.private.mac, socket=cfg.private.socket))
        return qemu.QemuSpec(
            name=self.name,
            accel=cfg.accel,
            memory_mib=cfg.memory_mib,
            cpus=cfg.cpus,
            disk=self._overlay() if cfg.image is not None else None,
            firmware=cfg.firmware,
            ovmf_vars=self._ovmf_vars() if cfg.firmware == "uefi" else None,
            kernel=cfg.kernel,
            initrd=cfg.initrd,
            kernel_args=cfg.kernel_args,
            nics=nics,
            fw_cfg=self._write_config(),
            console=self.console.path,
            qmp=self.state_dir / "qmp.sock",
            extra=cfg.extra_qemu,
        )

    def _launch(self, spec: qemu.QemuSpec) -> None:
        (self.state_dir / "qmp.sock").unlink(missing_ok=True)
        argv = qemu.command(spec)
        (self.state_dir / "qemu.argv").write_text(shlex.join(argv) + "\n")
        with self.qemu_log.open("ab") as err:
            self._proc = reaper.spawn(argv, stderr=err, cwd=self.state_dir)
        self._started_at = time.monotonic()
        self._dump_mark = 0
        self.boot_seconds = None
        log.info("%s: started QEMU pid %d (ssh port %d)", self.name, self._proc.pid, self.ssh_port)

    def _overlay(self) -> Path:
        overlay = self.state_dir / "disk.qcow2"
        if not overlay.exists():
            assert self.config.image is not None
            base = self.config.image.resolve()
            fmt = "raw" if base.suffix == ".raw" else "qcow2"
            done = subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base),
                 str(overlay)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise HarnessError(f"{self.name}: qemu-img create failed: {done.stderr.strip()}")
        return overlay

    def _ovmf_vars(self) -> Path:
        copy = self.state_dir / "OVMF_VARS.fd"
        if not copy.exists():
            if not qemu.OVMF_VARS.exists():
                raise HarnessError(f"UEFI firmware missing: {qemu.OVMF_VARS} (package ovmf)")
            shutil.copyfile(qemu.OVMF_VARS, copy)
        return copy

    def _write_config(self) -> Path:
        cfg = self.config
        interfaces = []
        if cfg.private is not None:
            interfaces.append(provision.StaticInterface(cfg.private.mac, cfg.private.address))
        keys = [cfg.key.public] if cfg.key is not None else []
        document = provision.config_document(self.name, keys, interfaces, user=cfg.user)
        document.update(cfg.extra_config)
        return provision.write_config(self.state_dir / "config.json", document)

    def _qemu_stderr(self) -> str:
        return self.qemu_log.read_text(errors="replace") if self.qemu_log.exists() else ""

    def _check_alive(self, message: str) -> None:
        if not self.is_running:
            code = self._proc.returncode if self._proc is not None else None
            raise QemuError(
                self.name, f"{message} (exit status {code})", self._qemu_stderr()[-2000:],
                str(self.console.path),
            )  # fmt: skip

    def wait_for_ssh(self, timeout: float | None = None) -> float:
        """Wait until SSH accepts the run's key; returns seconds since :meth:`start`.

        Raises :class:`QemuError` if QEMU dies meanwhile, :class:`SshError` on timeout, and
        :class:`GateFailure` at once if the console shows a panic or an emergency shell (the
        image's fault, not the harness's). A first boot whose vCPUs stall
        (:mod:`keel_harness.stall`) is started again once from a fresh disk, logged and
        kept in :attr:`stalled_boots`; a second stall raises :class:`GuestStalled`.
        """
        try:
            return self._wait_for_ssh(timeout)
        except GuestStalled as exc:
            if self._ever_up:
                raise
            log.warning("%s: %s; booting it again from a fresh disk", self.name, exc)
            self.stalled_boots.append(str(exc))
            self._boot_afresh()
            return self._wait_for_ssh(timeout)

    def _boot_afresh(self) -> None:
        """Power off (QEMU quits), drop the disk overlay and UEFI variables, start again."""
        self.crash()
        (self.state_dir / "disk.qcow2").unlink(missing_ok=True)
        (self.state_dir / "OVMF_VARS.fd").unlink(missing_ok=True)
        self.start()

    def _vcpus(self) -> tuple[stall.CpuState, ...]:
        monitor = qemu.Qmp(self.state_dir / "qmp.sock", timeout=5)
        return stall.parse_registers(
            monitor.execute("human-monitor-command", **{"command-line": "info registers -a"})
        )

    def _console_bytes(self) -> int:
        try:
            return self.console.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _wait_for_ssh(self, timeout: float | None) -> float:
        if self.config.key is None:
            raise HarnessError(f"{self.name} was started without an SSH key")
        if self._session is not None and self._session.connected:
            return self.boot_seconds or 0.0
        timeout = timeout if timeout is not None else self.config.boot_timeout
        # Fine-grained once the guest has its address (a probe every 0.25 s, see
        # BannerProbe): this wait is what the boot time figures measure.
        watch = netwatch.AddressWatch(self._user_dump, self._user_mac, self._dump_mark)
        probe = ssh.BannerProbe(self.ssh_port, address_known=watch)
        quiet = self.config.stall_quiet_seconds
        stalled = stall.StallWatch(self._vcpus, self._console_bytes, quiet=quiet or float("inf"))

        def ready(last: bool) -> bool:
            fatal = [t for t in find_trouble(self.console.text()) if t.startswith(FATAL_TROUBLE)]
            if fatal:
                raise GateFailure(self.name, [f"console: {t}" for t in fatal])
            self._check_alive("QEMU exited while booting")
            if stalled.poll():
                raise GuestStalled(f"{self.name}: {stalled.describe()}")
            if not probe.poll(0.25):
                return False
            answered = probe.take()
            probe.close()
            session = ssh.Session(self.ssh_port, self.config.key, self.config.user)  # type: ignore[arg-type]
            try:
                if answered is None:
                    session.connect()
                else:
                    session.connect(sock=answered[0], read=answered[1])
            except SshError:
                if last:
                    raise
                return False
            self._session = session
            return True

        try:
            retry(ready, timeout=timeout, what=f"SSH on {self.name}", interval=0.0)
        except HarnessError as exc:
            if isinstance(exc, QemuError | GuestStalled):
                raise
            raise SshError(
                f"{self.name}: no SSH on 127.0.0.1:{self.ssh_port} after {timeout:.0f} s "
                f"({exc}); console tail:\n{self.console.tail(15)}"
            ) from exc
        finally:
            probe.close()
        self.boot_seconds = time.monotonic() - self._started_at
        self._ever_up = True
        log.info("%s: SSH up after %.1f s", self.name, self.boot_seconds)
        return self.boot_seconds

    def shutdown(self, timeout: float = 300.0) -> None:
        """Power off from inside (``systemctl poweroff``) and wait for QEMU to exit."""
        if not self.is_running:
            return
        with contextlib.suppress(HarnessError):
            self.run("systemctl --no-block poweroff", timeout=30)
        self._drop_session()
        self.wait_for_shutdown(timeout)

    def wait_for_shutdown(self, timeout: float = 300.0) -> int:
        """Wait until QEMU exits by itself (the guest powered off); returns its status."""
        assert self._proc is not None, "machine was never started"
        proc = self._proc
        retry(lambda last: proc.poll() is not None, timeout=timeout,
              what=f"{self.name} to power off", interval=0.5)  # fmt: skip
        reaper.forget(proc)
        self._drop_session()
        return proc.returncode

    def crash(self) -> None:
        """Cut the power: QEMU quits at once, the guest gets no chance to flush or unmount."""
        if self._proc is None:
            return
        with contextlib.suppress(HarnessError):
            if self.is_running:
                qemu.Qmp(self.state_dir / "qmp.sock", timeout=5).execute("quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)
        reaper.kill(self._proc)
        self._drop_session()

    def reboot(self, timeout: float | None = None) -> None:
        """Reboot from inside and wait until SSH is back on the new boot (boot id changes)."""
        before = self.boot_id()
        with contextlib.suppress(HarnessError):
            self.run("systemctl --no-block reboot", timeout=30)
        self._drop_session()
        timeout = timeout if timeout is not None else self.config.boot_timeout
        self._started_at = time.monotonic()
        self.console.mark()
        self._dump_mark = netwatch.end_of(self._user_dump)

        def rebooted(last: bool) -> bool:
            self._check_alive("QEMU exited during a reboot")
            try:
                self.wait_for_ssh(timeout=5)
            except SshError:
                return False
            if self.boot_id() == before:  # still the old boot, going down
                self._drop_session()
                return False
            return True

        retry(rebooted, timeout=timeout, what=f"{self.name} to come back from reboot")

    def stop(self) -> None:
        """Make sure QEMU is gone (fixture teardown): no guest shutdown, no waiting."""
        self._drop_session()
        if self._proc is not None:
            reaper.stop(self._proc, grace=2.0)

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        self._host = None

    # ----- commands ----------------------------------------------------------------------
    def run(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str, str]:
        """Run ``command`` as root; returns (status, stdout, stderr). The other helpers use it."""
        self._check_alive("QEMU is not running")
        if self._session is None or not self._session.connected:
            self.wait_for_ssh()
        assert self._session is not None
        return self._session.run(command, timeout)

    def execute(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
        """Run ``command`` as root; returns (status, stdout then stderr) whatever the status.

        Both streams, because a test that expects a command to fail wants to read why
        (``Read-only file system``); use :meth:`run` to get them apart.
        """
        status, out, err = self.run(command, timeout)
        return status, out + err

    def succeed(self, *commands: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run each command as root; fail the test if one exits non-zero. Returns stdout."""
        output = ""
        for command in commands:
            status, out, err = self.run(command, timeout)
            if status != 0:
                raise CommandFailed(self.name, command, status, out + err)
            output += out
        return output

    def fail(self, *commands: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run each command as root; fail the test if one exits zero. Returns stdout."""
        output = ""
        for command in commands:
            status, out, err = self.run(command, timeout)
            if status == 0:
                raise CommandFailed(self.name, command, status, out + err)
            output += out
        return output

    def wait_until_succeeds(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Retry ``command`` until it exits zero; returns its stdout."""

        def check(last: bool) -> str | None:
            status, out, err = self.run(command, timeout=min(timeout, 60))
            if status == 0:
                return out
            if last:
                raise CommandFailed(self.name, command, status, out + err)
            return None

        return retry(check, timeout=timeout, what=f"{command!r} to succeed on {self.name}")

    def wait_for_unit(self, unit: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until ``unit`` is active; fail at once if it fails or stops with no job."""

        def check(last: bool) -> bool:
            props = self.unit_properties(unit)
            state = props.get("ActiveState", "")
            if state == "active":
                return True
            if state == "failed":
                raise AssertionError(f"{self.name}: unit {unit} failed:\n{self._status(unit)}")
            if state == "inactive" and not self._has_job(unit):
                raise AssertionError(
                    f"{self.name}: unit {unit} is inactive and nothing will start it"
                )
            return False

        retry(check, timeout=timeout, what=f"unit {unit} on {self.name}")

    def unit_properties(self, unit: str) -> dict[str, str]:
        """``systemctl show`` of ``unit`` as a dict."""
        out = self.succeed(f"systemctl show --no-pager {shlex.quote(unit)}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def _has_job(self, unit: str) -> bool:
        out = self.succeed("systemctl list-jobs --no-legend --plain --no-pager")
        return any(line.split()[1:2] == [unit] for line in out.splitlines() if line.strip())

    def _status(self, unit: str) -> str:
        return self.execute(f"systemctl status --no-pager -n 20 {shlex.quote(unit)}")[1]

    def wait_for_open_port(
        self, port: int, address: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        """Wait until something in the guest listens on ``address:port`` (checked inside)."""
        probe = f"timeout 3 bash -c {shlex.quote(f'</dev/tcp/{address}/{port}')}"
        retry(lambda last: self.execute(probe, timeout=30)[0] == 0, timeout=timeout,
              what=f"port {address}:{port} on {self.name}")  # fmt: skip

    def wait_for_console_text(
        self, pattern: str, timeout: float = DEFAULT_TIMEOUT
    ) -> re.Match[str]:
        """Wait until the console (since the last start) matches ``pattern``."""
        regex = re.compile(pattern)

        def check(last: bool) -> re.Match[str] | None:
            found = self.console.search(regex)
            if found is None:
                self._check_alive(f"QEMU exited before the console showed {pattern!r}")
            return found

        return retry(check, timeout=timeout, what=f"console text {pattern!r} on {self.name}",
                     interval=0.2)  # fmt: skip

    def forwarded_port(self, guest_port: int) -> int:
        """The host port (on 127.0.0.1) that reaches ``guest_port`` of the guest's address."""
        if guest_port not in self.forwarded:
            raise HarnessError(
                f"{self.name}: guest port {guest_port} is not forwarded; add it to the "
                f"machine's forwards (machine_factory(..., forwards=[{guest_port}]))"
            )
        return self.forwarded[guest_port]

    @contextlib.contextmanager
    def tunnel_to_guest(
        self, guest_port: int, guest_host: str = "127.0.0.1", timeout: float = 60.0
    ) -> Iterator[int]:
        """``ssh -L``: a free port on the host's 127.0.0.1 reaching ``guest_host:guest_port``
        as the guest sees it (its loopback by default). Yields the host port."""
        port = free_port()
        with self._ssh_tunnel("-L", f"127.0.0.1:{port}:{guest_host}:{guest_port}") as alive:

            def listening(last: bool) -> bool:
                alive()
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    return True
                return False

            retry(listening, timeout=timeout, what=f"ssh -L to {self.name}:{guest_port}")
            yield port

    @contextlib.contextmanager
    def tunnel_to_host(
        self, host_port: int, guest_port: int, timeout: float = 60.0
    ) -> Iterator[None]:
        """``ssh -R``: the guest's 127.0.0.1:``guest_port`` reaches the host's
        127.0.0.1:``host_port`` (e.g. a registry the test runs), through the SSH connection;
        the guest's network stays restricted."""
        with self._ssh_tunnel("-R", f"127.0.0.1:{guest_port}:127.0.0.1:{host_port}") as alive:
            probe = f"timeout 3 bash -c {shlex.quote(f'</dev/tcp/127.0.0.1/{guest_port}')}"

            def listening(last: bool) -> bool:
                alive()
                return self.execute(probe, timeout=30)[0] == 0

            retry(listening, timeout=timeout, what=f"ssh -R from {self.name}:{guest_port}")
            yield

    @contextlib.contextmanager
    def _ssh_tunnel(self, option: str, spec: str) -> Iterator[Callable[[], None]]:
        """Run ``ssh -N option spec``; yields a check that raises if it has ended."""
        key = self.config.key
        if key is None:
            raise HarnessError(f"{self.name} was started without an SSH key: no tunnels")
        self.wait_for_ssh()
        argv = ["ssh", "-N", "-i", str(key.private), "-p", str(self.ssh_port),
                *ssh.CLI_OPTIONS, "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
                option, spec, f"{self.config.user}@127.0.0.1"]  # fmt: skip
        log_path = self.state_dir / "ssh-tunnels.log"
        with log_path.open("ab") as err:
            proc = reaper.spawn(argv, stderr=err)

        def alive() -> None:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-1000:]
                raise HarnessError(
                    f"{self.name}: ssh {option} {spec} exited {proc.returncode}: {tail}"
                )

        try:
            yield alive
        finally:
            reaper.stop(proc, grace=5.0)
        if proc.returncode not in (0, -15, 255):  # ended by us (TERM), or by the guest going
            log.warning("%s: ssh %s %s exited %s", self.name, option, spec, proc.returncode)

    def boot_id(self) -> str:
        """The kernel's boot id: changes on every boot."""
        return self.succeed("cat /proc/sys/kernel/random/boot_id").strip()

    def copy_from_host(self, source: Path, destination: str, mode: int | None = None) -> None:
        """Copy the host file ``source`` to ``destination`` in the guest (as root)."""
        self._check_alive("QEMU is not running")
        if self._session is None or not self._session.connected:
            self.wait_for_ssh()
        assert self._session is not None
        file_mode = mode if mode is not None else source.stat().st_mode & 0o777
        self._session.write_file(destination, source.read_bytes(), file_mode, timeout=300)

    def copy_from_vm(self, path: str, target_dir: Path) -> list[Path]:
        """Copy ``path`` (file or directory, read as root) into ``target_dir``."""
        self._check_alive("QEMU is not running")
        if self._session is None or not self._session.connected:
            self.wait_for_ssh()
        assert self._session is not None
        return ssh.extract_tar(self._session.read_tar(path, timeout=300), target_dir)

    @property
    def host(self) -> Any:
        """A testinfra host for this machine (``paramiko://core@127.0.0.1:PORT``, sudo)."""
        if self._host is None:
            import testinfra  # noqa: PLC0415 - heavy, and only needed by tests that use it

            self.wait_for_ssh()
            assert self.config.key is not None
            spec = f"paramiko://{self.config.user}@127.0.0.1:{self.ssh_port}"
            self._host = testinfra.get_host(
                spec,
                ssh_identity_file=str(self.config.key.private),
                ssh_config=str(self._ssh_config()),
                sudo=True,
            )
        return self._host

    def _ssh_config(self) -> Path:
        path = self.state_dir / "ssh_config"
        path.write_text(
            "Host 127.0.0.1\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
        )
        return path
