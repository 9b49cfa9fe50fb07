"""The supervisor: creates, starts, stops and removes containers, and finds them again.

It owns no long-lived state in memory: everything is in the container directories (see
:mod:`keel_supervisor.state`), and each running container has its own monitor process
(:mod:`keel_supervisor.monitor`). So a supervisor that restarts, in a new daemon or a
one-shot CLI, sees exactly what the old one saw; :meth:`Supervisor.recover` re-mounts,
re-attaches and restarts what a reboot took down, following each restart policy.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from keel_core.types import ContainerRuntime
from keel_supervisor import cgroups, network, policy, rootfs, spec
from keel_supervisor.model import ContainerConfig, SupervisorError
from keel_supervisor.runtimes import builtin, choose
from keel_supervisor.sources import ImageLike, ImageSource, RootfsImage, image_health
from keel_supervisor.state import ContainerDir, Record, Status, write_json

READY_TIMEOUT = 60.0


class Supervisor:
    """Container lifecycle on one node."""

    def __init__(
        self,
        root: Path,
        *,
        run_dir: Path,
        images: ImageSource | None = None,
        runtimes: Sequence[ContainerRuntime] | None = None,
        runtime: str | None = None,
        bridge: network.Bridge | None = None,
        log_max_size: int = 10 << 20,
        log_max_files: int = 3,
        warm: bool = False,
    ) -> None:
        """``warm`` keeps a spare monitor started ahead, for fast starts (the daemon does)."""
        self.root = root
        self.run_dir = run_dir
        self.images = images
        self.runtimes = list(runtimes) if runtimes is not None else builtin()
        self.runtime_name = runtime
        self.bridge = bridge or network.Bridge(state_dir=root / "network")
        self.log_max_size = log_max_size
        self.log_max_files = log_max_files
        self.warm = warm
        self._spare: tuple[subprocess.Popen[bytes], int] | None = None
        self._children: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._want_spare = threading.Event()
        self._closed = False
        (root / "containers").mkdir(parents=True, exist_ok=True)
        if warm:
            self._spare = self._spawn_monitor()
            # Spares are refilled by one long-lived thread: waking it costs a start less
            # than starting a thread would.
            threading.Thread(target=self._refiller, name="spare-monitor", daemon=True).start()

    # -- lookup --------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Every container's id, oldest first."""
        dirs = [p for p in (self.root / "containers").iterdir() if (p / "record.json").exists()]
        return [p.name for p in sorted(dirs, key=lambda p: p.stat().st_mtime)]

    def resolve(self, ref: str) -> ContainerDir:
        """A container by name, full id or unique id prefix."""
        matches = []
        for cid in self.ids():
            cdir = ContainerDir(self.root, cid)
            if ref == cid or ref == cdir.record().name:
                return cdir
            if cid.startswith(ref):
                matches.append(cdir)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise SupervisorError(f"{ref!r} matches {len(matches)} containers; give more of the id")
        raise SupervisorError(f"no container named {ref!r} (see `keel container ps -a`)")

    def _image(self, config: ContainerConfig) -> ImageLike:
        if config.rootfs:
            return RootfsImage(Path(config.image))
        if self.images is None:
            raise SupervisorError("no image store is configured: use --rootfs DIR")
        return self.images.get(config.image)

    # -- create / start ------------------------------------------------------------------
    def create(self, config: ContainerConfig) -> str:
        """Make the container's directory, rootfs and bundle; returns its id."""
        name = config.name
        with self._lock:
            taken = {ContainerDir(self.root, c).record().name for c in self.ids()}
            cid = secrets.token_hex(32)
            if name is None:
                base = Path(config.image).name if config.rootfs else config.image
                name = f"{base.split(':')[0].split('/')[-1]}-{cid[:6]}"
            if name in taken:
                raise SupervisorError(f"the name {name!r} is in use: remove that container first")
            if config.ports and config.network == "none":
                raise SupervisorError("ports cannot be published with network none")
            image = self._image(config)
            runtime = choose(self.runtimes, self.runtime_name)
            cdir = ContainerDir(self.root, cid)
            cdir.path.mkdir(parents=True)
            write_json(cdir.config_file, config.model_dump(mode="json"))
            record = Record(
                id=cid,
                name=name,
                image_id=image.id,
                created=time.time(),
                runtime=runtime.name,
                image_config=dict(image.config or {}),
                layers=[str(p) for p in image.layer_dirs()],
            )
            write_json(cdir.record_file, asdict(record))
        if self.images is not None and not config.rootfs:
            self.images.pin(image.id, cid)
        cdir.save_status(Status())
        return cid

    def prepare(self, cdir: ContainerDir) -> None:
        """Mount the rootfs, attach the network, write the bundle and the monitor's brief."""
        config, record = cdir.config(), cdir.record()
        rootfs.mount_overlay([Path(p) for p in record.layers], cdir.upper, cdir.work, cdir.rootfs)
        netns: Path | None = None
        if config.network == "bridge":
            self.bridge.ensure()
            record.ip = self.bridge.allocate(cdir.id)
            netns = self.bridge.attach(cdir.id, record.ip)
        # network "none": the runtime makes a fresh namespace with loopback up.
        if record.netns != str(netns or "") or config.network == "bridge":
            record.netns = str(netns or "")
            write_json(cdir.record_file, asdict(record))
        etc = self._etc_files(cdir, config, record)
        volumes = {}
        for vol in config.volumes:
            if not vol.is_bind:
                volumes[vol.source] = self.root / "volumes" / vol.source / "_data"
                volumes[vol.source].mkdir(parents=True, exist_ok=True)
        bundle = spec.build(
            config,
            record.image_config,
            container_id=cdir.id,
            rootfs=cdir.rootfs,
            volume_dirs=volumes,
            netns=netns,
            etc_files=etc,
        )
        write_json(cdir.bundle / "config.json", bundle)
        runtime = choose(self.runtimes, record.runtime)
        health = config.healthcheck or image_health(record.image_config)
        write_json(
            cdir.monitor_file,
            {
                "runtime_argv": list(runtime.command()),
                "runtime_root": str(self.run_dir / "runtime" / runtime.name),
                "create_then_start": bool(getattr(runtime, "create_then_start", False)),
                "cgroups_path": bundle["linux"]["cgroupsPath"],
                "restart": {"name": config.restart.name, "max_retries": config.restart.max_retries},
                "stop_signal": config.stop_signal
                or record.image_config.get("StopSignal")
                or "TERM",
                "stop_timeout": config.stop_timeout,
                "health": health.model_dump() if health else None,
                "ports": [
                    {
                        "host_ip": p.host_ip,
                        "host_port": p.host_port,
                        "container_ip": record.ip,
                        "container_port": p.container_port,
                    }
                    for p in config.ports
                    if config.network == "bridge"
                ],
                "log_max_size": self.log_max_size,
                "log_max_files": self.log_max_files,
            },
        )

    def _etc_files(
        self, cdir: ContainerDir, config: ContainerConfig, record: Record
    ) -> dict[str, Path]:
        if config.network == "host":
            return {"/etc/hosts": Path("/etc/hosts"), "/etc/resolv.conf": Path("/etc/resolv.conf")}
        hostname = config.hostname or cdir.id[:12]
        hosts = cdir.path / "hosts"
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        if record.ip:
            lines.append(f"{record.ip}\t{hostname} {record.name}")
        hosts.write_text("\n".join(lines) + "\n")
        if config.network == "none":
            return {"/etc/hosts": hosts}  # no DNS without a network
        resolv = cdir.path / "resolv.conf"
        try:
            shutil.copyfile("/etc/resolv.conf", resolv)
        except OSError:
            resolv.write_text("")
        return {"/etc/hosts": hosts, "/etc/resolv.conf": resolv}

    def start(self, ref: str) -> str:
        """Start a created or ended container; returns once its process runs (or failed)."""
        cdir = self.resolve(ref)
        if self.monitor_alive(cdir):
            raise SupervisorError(f"container {cdir.record().name} is already running")
        return self._start(cdir)

    def _start(self, cdir: ContainerDir) -> str:
        self.prepare(cdir)
        cdir.stop_file.unlink(missing_ok=True)  # the monitor clears status.stopped itself
        child, read_fd = self._take_monitor()
        assert child.stdin is not None
        try:
            child.stdin.write(f"{cdir.path}\n".encode())
            child.stdin.close()
        except BrokenPipeError:
            os.close(read_fd)
            raise SupervisorError("the container's monitor died before it started") from None
        with self._lock:
            self._children.append(child)
        message = _read_ready(read_fd, READY_TIMEOUT)
        if self.warm:  # the next start's monitor, started off the critical path
            self._want_spare.set()
        if message != "ok":
            raise SupervisorError(f"container {cdir.record().name} did not start: {message}")
        return cdir.id

    def _monitor_argv(self, ready_fd: int) -> list[str]:
        """The command of a spare monitor that reports on ``ready_fd`` (benchmarks wrap it)."""
        return [sys.executable, "-m", "keel_supervisor.monitor", "--spare", str(ready_fd)]

    def _spawn_monitor(self) -> tuple[subprocess.Popen[bytes], int]:
        """Start a spare monitor; returns it and the read end of its ready pipe."""
        read_fd, write_fd = os.pipe()
        try:
            child = subprocess.Popen(
                self._monitor_argv(write_fd),
                pass_fds=(write_fd,),
                start_new_session=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            os.close(write_fd)
        return child, read_fd

    def _refiller(self) -> None:
        """Start a new spare whenever one was taken, until :meth:`close`."""
        while True:
            self._want_spare.wait()
            self._want_spare.clear()
            with self._lock:
                if self._closed:
                    return
                have = self._spare is not None
            if not have:
                self._refill()

    def _refill(self) -> None:
        spare = self._spawn_monitor()
        old: tuple[subprocess.Popen[bytes], int] | None
        with self._lock:
            if self._closed:  # closed meanwhile: this spare is not wanted
                old = spare
            else:
                old, self._spare = self._spare, spare
        if old is not None:  # two starts raced: let the older spare go
            assert old[0].stdin is not None
            old[0].stdin.close()
            os.close(old[1])

    def _take_monitor(self) -> tuple[subprocess.Popen[bytes], int]:
        """The spare monitor if one waits (and is alive), else a new one."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare[0].poll() is None:
            return spare
        if spare is not None:
            os.close(spare[1])
        return self._spawn_monitor()

    def spare_waiting(self) -> bool:
        """Whether a spare monitor has loaded and waits for work (blocked reading stdin)."""
        with self._lock:
            spare = self._spare
        if spare is None or spare[0].poll() is not None:
            return False
        try:
            syscall = Path(f"/proc/{spare[0].pid}/syscall").read_text().split()
        except OSError:
            return False
        return syscall[:2] == ["0", "0x0"]  # read(0, ...)

    def close(self) -> None:
        """Let the spare monitor go (containers are not affected)."""
        with self._lock:
            spare, self._spare = self._spare, None
            self._closed = True
        self._want_spare.set()
        if spare is not None:
            assert spare[0].stdin is not None
            spare[0].stdin.close()  # end of input: the spare exits
            spare[0].wait(10)
            os.close(spare[1])

    def run(self, config: ContainerConfig) -> str:
        """Create and start (``docker run -d``)."""
        cid = self.create(config)
        self._start(ContainerDir(self.root, cid))  # new: no need to look it up or probe it
        return cid

    # -- stop / kill / remove ------------------------------------------------------------
    def monitor_alive(self, cdir: ContainerDir) -> bool:
        """Whether the container's monitor process is running."""
        self.reap()
        pid = cdir.status().monitor_pid
        if not pid:
            return False
        try:  # a monitor works in its container's directory; pids get reused
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return (
            cwd == str(cdir.path.resolve())
            and b"keel_supervisor.monitor" in cmdline
            and stat.rsplit(")", 1)[1].split()[0] != "Z"
        )

    def stop(self, ref: str, timeout: float | None = None) -> None:
        """Stop signal, up to ``timeout`` seconds, then KILL; no policy restarts it."""
        cdir = self.resolve(ref)
        config = cdir.config()
        wait = config.stop_timeout if timeout is None else timeout
        write_json(cdir.stop_file, {"timeout": wait})
        if not self.monitor_alive(cdir):
            status = cdir.status()
            if status.state in ("running", "restarting"):
                status.state = "stopped"
            status.stopped = True
            cdir.save_status(status)
            return
        os.kill(cdir.status().monitor_pid, signal.SIGTERM)
        deadline = time.monotonic() + wait + 30
        while self.monitor_alive(cdir):
            if time.monotonic() > deadline:
                raise SupervisorError(f"container {cdir.record().name} did not stop in time")
            time.sleep(0.02)

    def kill(self, ref: str, sig: str = "KILL") -> None:
        """Send ``sig`` to the container's init; its restart policy then applies."""
        cdir = self.resolve(ref)
        record = cdir.record()
        if cdir.status().state != "running":
            raise SupervisorError(f"container {record.name} is not running")
        runtime = choose(self.runtimes, record.runtime)
        proc = subprocess.run(
            [
                *runtime.command(),
                "--root",
                str(self.run_dir / "runtime" / runtime.name),
                "kill",
                cdir.id,
                sig.removeprefix("SIG"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SupervisorError(f"kill {record.name}: {proc.stderr.strip()}")

    def remove(self, ref: str, *, force: bool = False) -> None:
        """Delete the container and its writable layer (named volumes stay)."""
        cdir = self.resolve(ref)
        if self.monitor_alive(cdir):
            if not force:
                raise SupervisorError(
                    f"container {cdir.record().name} is running: stop it first or use --force"
                )
            self.stop(cdir.id, timeout=0)
        self.release(cdir)
        record = cdir.record()
        if self.images is not None and not record.image_id.startswith("rootfs:"):
            self.images.unpin(record.image_id, cdir.id)
        shutil.rmtree(cdir.path, ignore_errors=True)

    def release(self, cdir: ContainerDir) -> None:
        """Unmount the rootfs and take down the network of a container that has ended.

        The runtime's record goes too, in case its monitor died before it could delete it.
        """
        record = cdir.record()
        runtime = choose(self.runtimes, record.runtime)
        subprocess.run(
            [
                *runtime.command(),
                "--root",
                str(self.run_dir / "runtime" / runtime.name),
                "delete",
                "--force",
                cdir.id,
            ],
            capture_output=True,
            check=False,
        )
        cgroups.prune(f"/keel/{cdir.id}")
        rootfs.unmount(cdir.rootfs)
        network.network_release(self.bridge, cdir.id)

    # -- exec ----------------------------------------------------------------------------
    def exec(
        self, ref: str, argv: Sequence[str], *, env: Sequence[str] = (), workdir: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in the running container, capturing its output."""
        cdir = self.resolve(ref)
        record = cdir.record()
        if cdir.status().state != "running":
            raise SupervisorError(f"container {record.name} is not running: start it first")
        runtime = choose(self.runtimes, record.runtime)
        extra = [arg for item in env for arg in ("--env", item)]
        if workdir:
            extra += ["--cwd", workdir]
        return subprocess.run(
            [
                *runtime.command(),
                "--root",
                str(self.run_dir / "runtime" / runtime.name),
                "exec",
                *extra,
                cdir.id,
                *argv,
            ],
            capture_output=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    # -- recovery ------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """After a supervisor (or node) restart: bring back what the policies say.

        Containers whose monitor still runs are left alone. Others are marked ended and,
        if their policy says so (``always``, ``unless-stopped`` not stopped by hand,
        ``on-failure`` after a failure), started again. Returns the ids started.
        """
        started = []
        for cid in self.ids():
            cdir = ContainerDir(self.root, cid)
            if self.monitor_alive(cdir):
                continue
            status = cdir.status()
            if status.state in ("running", "restarting"):
                status.state, status.pid = "exited", 0
                status.exit_code = status.exit_code if status.exit_code is not None else 255
                status.error = status.error or "the node or the monitor stopped"
                cdir.save_status(status)
            config = cdir.config()
            if policy.start_at_boot(
                config.restart.name, stopped=status.stopped, last_exit=status.exit_code
            ):
                try:
                    self.start(cid)
                    started.append(cid)
                except SupervisorError as exc:
                    status = cdir.status()
                    status.error = str(exc)
                    cdir.save_status(status)
        return started

    def reap(self) -> None:
        """Collect monitors that ended (they are our children while we live)."""
        with self._lock:
            self._children = [c for c in self._children if c.poll() is None]


def _read_ready(fd: int, timeout: float) -> str:
    """What the monitor writes to its ready pipe: ``ok`` or an error message."""
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return f"no word from its monitor in {timeout:g} s"
        data = os.read(fd, 4096).decode("utf-8", "replace")
        return data or "its monitor exited before starting it (see monitor.log)"
    finally:
        os.close(fd)
