"""The supervisor daemon: API socket, recovery at start, declarative apps, discovery.

Started by the ``keel-supervisor`` systemd unit as ``keel container daemon``. At start it
(1) recovers containers that a reboot or crash took down, according to their restart
policies, (2) reconciles the app definitions in ``apps_dir`` and keeps watching them,
(3) registers services in the store when an etcd endpoint is configured, and (4) serves
the API on its unix socket. It holds no state of its own beyond that: stopping it leaves
every container running.
"""

from __future__ import annotations

import base64
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from keel_core import systemd
from keel_supervisor import logs, views
from keel_supervisor.api import NotFound, Router, Stream, UnixServer
from keel_supervisor.model import ContainerConfig, Schema, SupervisorError
from keel_supervisor.network import Bridge
from keel_supervisor.sources import ImageSource
from keel_supervisor.state import ContainerDir
from keel_supervisor.supervisor import Supervisor

log = logging.getLogger("keel.supervisor")


class Settings(Schema):
    """``/etc/keel/supervisor.yaml``: where the supervisor keeps things and whom it talks to."""

    root: Path = Field(default=Path("/var/lib/keel/supervisor"), description="containers, volumes")
    images: Path = Field(default=Path("/var/lib/keel/images"), description="the image store")
    run_dir: Path = Field(default=Path("/run/keel"), description="runtime state (gone at reboot)")
    socket: Path = Field(default=Path("/run/keel/supervisor.sock"), description="the API socket")
    apps_dir: Path = Field(default=Path("/etc/keel/apps"), description="declarative apps (*.yaml)")
    runtime: str | None = Field(default=None, description="runc, crun (default: best available)")
    bridge: str = Field(default="keel0", description="the containers' bridge")
    subnet: str = Field(default="10.88.0.0/16", description="the bridge's private subnet")
    outbound: bool = Field(
        default=True, description="forward and masquerade traffic leaving the node"
    )
    etcd: list[str] = Field(default_factory=list, description="store endpoints (host:port)")
    domain: str = Field(default="keel.local", description="DNS domain of registered services")
    advertise: str = Field(default="127.0.0.1", description="the node address put in registrations")
    lease_ttl: int = Field(default=10, ge=2, description="seconds a registration outlives its node")
    log_max_size: int = Field(default=10 << 20, description="bytes per log file before rotating")
    log_max_files: int = Field(default=3, ge=1)


def open_images(settings: Settings) -> ImageSource | None:
    """The image store, when this build has it."""
    try:
        from keel_supervisor.images import ImageStore  # noqa: PLC0415 - optional part
    except ImportError:
        return None
    store: ImageSource = ImageStore(settings.images)
    return store


class Daemon:
    """The running supervisor: one :class:`Supervisor` and what serves and drives it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.images = open_images(settings)
        self.supervisor = Supervisor(
            settings.root,
            run_dir=settings.run_dir,
            images=self.images,
            runtime=settings.runtime,
            bridge=Bridge(
                settings.bridge, settings.subnet, settings.root / "network", settings.outbound
            ),
            log_max_size=settings.log_max_size,
            log_max_files=settings.log_max_files,
            warm=True,
        )
        self.stopping = threading.Event()
        self.apps: Any = None
        self.discovery: Any = None
        self.server: UnixServer | None = None

    # -- routes --------------------------------------------------------------------------
    def router(self) -> Router:
        """Every API route."""
        r = Router()
        r.add("GET", "/ping", lambda query, body: {"ok": True})
        r.add("GET", "/containers", self.list_containers)
        r.add("POST", "/containers", self.create)
        r.add("GET", "/containers/{ref}", self.inspect)
        r.add("DELETE", "/containers/{ref}", self.remove)
        r.add("POST", "/containers/{ref}/start", self.start)
        r.add("POST", "/containers/{ref}/stop", self.stop)
        r.add("POST", "/containers/{ref}/kill", self.kill)
        r.add("POST", "/containers/{ref}/exec", self.exec)
        r.add("GET", "/containers/{ref}/logs", self.logs)
        r.add("GET", "/images", self.list_images)
        r.add("POST", "/images/load", self.load_image)
        r.add("POST", "/images/pull", self.pull_image)
        r.add("DELETE", "/images/{ref}", self.remove_image)
        r.add("GET", "/services", self.services)
        r.add("GET", "/apps", self.list_apps)
        return r

    def _dir(self, ref: str) -> Any:
        try:
            return self.supervisor.resolve(ref)
        except SupervisorError as exc:
            raise NotFound(str(exc)) from None

    def list_containers(self, query: dict[str, str], body: Any) -> list[dict[str, Any]]:
        rows = []
        for cid in self.supervisor.ids():
            cdir = self.supervisor.resolve(cid)
            row = views.summary(cdir, alive=self.supervisor.monitor_alive(cdir))
            if query.get("all") or row["state"] in ("running", "restarting"):
                rows.append(row)
        return rows

    def create(self, query: dict[str, str], body: Any) -> dict[str, Any]:
        config = ContainerConfig.model_validate(body["config"])
        if body.get("start", True):
            cid = self.supervisor.run(config)
        else:
            cid = self.supervisor.create(config)
        return {"id": cid, "name": ContainerDir(self.supervisor.root, cid).record().name}

    def inspect(self, ref: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        cdir = self._dir(ref)
        return views.inspect(cdir, alive=self.supervisor.monitor_alive(cdir))

    def remove(self, ref: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        cdir = self._dir(ref)
        self.supervisor.remove(cdir.id, force=bool(query.get("force")))
        return {"removed": cdir.id}

    def start(self, ref: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        return {"id": self.supervisor.start(self._dir(ref).id)}

    def stop(self, ref: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        cdir = self._dir(ref)
        timeout = (body or {}).get("timeout")
        self.supervisor.stop(cdir.id, None if timeout is None else float(timeout))
        return {"stopped": cdir.id, "exit_code": cdir.status().exit_code}

    def kill(self, ref: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        cdir = self._dir(ref)
        self.supervisor.kill(cdir.id, str((body or {}).get("signal", "KILL")))
        return {"killed": cdir.id}

    def exec(self, ref: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        cdir = self._dir(ref)
        proc = self.supervisor.exec(
            cdir.id, list(body["argv"]), env=body.get("env", []), workdir=body.get("workdir")
        )
        return {
            "exit_code": proc.returncode,
            "stdout": base64.b64encode(proc.stdout).decode(),
            "stderr": base64.b64encode(proc.stderr).decode(),
        }

    def logs(self, ref: str, query: dict[str, str], body: Any) -> Any:
        cdir = self._dir(ref)
        tail = int(query["tail"]) if query.get("tail", "") not in ("", "all") else None
        since = logs.parse_since(query["since"]) if query.get("since") else None
        if not query.get("follow"):
            return [vars(x) for x in logs.read(cdir.logs, tail=tail, since=since)]

        def ended() -> bool:
            return self.stopping.is_set() or not self.supervisor.monitor_alive(cdir)

        lines = logs.follow(cdir.logs, tail=tail, since=since, until=ended)
        return Stream(vars(x) for x in lines)

    # -- images --------------------------------------------------------------------------
    def _store(self) -> Any:
        if self.images is None:
            raise SupervisorError("this supervisor has no image store: run with --rootfs DIR")
        return self.images

    def list_images(self, query: dict[str, str], body: Any) -> list[dict[str, Any]]:
        return [
            {"id": i.id, "references": list(i.references), "size": i.size}
            for i in self._store().list()
        ]

    def load_image(self, query: dict[str, str], body: Any) -> list[dict[str, Any]]:
        loaded = self._store().load(Path(body["path"]))
        return [{"id": i.id, "references": list(i.references)} for i in loaded]

    def pull_image(self, query: dict[str, str], body: Any) -> dict[str, Any]:
        image = self._store().pull(body["reference"], insecure=bool(body.get("insecure")))
        return {"id": image.id, "references": list(image.references)}

    def remove_image(self, ref: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        self._store().remove(ref, force=bool(query.get("force")))
        return {"removed": ref}

    def list_apps(self, query: dict[str, str], body: Any) -> dict[str, Any]:
        """The apps directory as the reconciler last saw it: apps and rejected files."""
        if self.apps is None:
            return {"directory": str(self.settings.apps_dir), "apps": {}, "problems": []}
        return {
            "directory": str(self.settings.apps_dir),
            "apps": self.apps.current_names(),
            "problems": list(self.apps.problems),
        }

    def services(self, query: dict[str, str], body: Any) -> list[dict[str, Any]]:
        if self.discovery is None:
            raise SupervisorError("discovery is off: set etcd endpoints in the supervisor config")
        listed: list[dict[str, Any]] = self.discovery.list()
        return listed

    # -- life ----------------------------------------------------------------------------
    def start_services(self) -> None:
        """Recover, then serve the API, reconcile apps and register services."""
        started = self.supervisor.recover()
        if started:
            log.info("restarted %d container(s) by policy", len(started))
        self.server = UnixServer(self.settings.socket, self.router())
        self.server.serve_in_thread()
        from keel_supervisor.apps import AppReconciler  # noqa: PLC0415 - cycle-free wiring

        self.apps = AppReconciler(self.supervisor, self.settings.apps_dir)
        self.apps.start(self.stopping)
        if self.settings.etcd:
            from keel_supervisor.discovery import Registrar  # noqa: PLC0415 - needs aetcd

            self.discovery = Registrar(self.supervisor, self.settings)
            self.discovery.start(self.stopping)

    def shutdown(self) -> None:
        """Stop serving; containers keep running."""
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.settings.socket.unlink(missing_ok=True)
        if self.discovery is not None:
            self.discovery.join()
        self.supervisor.close()


def serve(settings: Settings) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    from keel_supervisor.monitor import become_subreaper  # noqa: PLC0415

    # Before any child starts (the spare monitor starts with the Daemon): runc would see
    # the variable and wait for each container to notify systemd itself.
    notify_socket = systemd.take_socket()
    become_subreaper()
    daemon = Daemon(settings)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    daemon.start_services()
    log.info("supervisor listening on %s", settings.socket)
    systemd.notify(address=notify_socket)  # Type=notify unit: active once the API answers
    while not done.wait(1.0):
        daemon.supervisor.reap()
    daemon.shutdown()
    time.sleep(0)
