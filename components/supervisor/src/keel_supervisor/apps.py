"""Declarative apps: ``/etc/keel/apps/<name>.yaml`` files that say which containers run.

Each file is one container's settings (:class:`~keel_supervisor.model.ContainerConfig`);
its name is the file's stem unless it says otherwise, and its restart policy is
``unless-stopped`` unless it gives one, so that apps come back after a reboot. The
reconciler makes the running set match the files, at start and whenever a file changes:
a new file starts a container, a changed file replaces it, a removed file removes it. A
file with a mistake is reported (file, line, key) and changes nothing: the container
from the last good version keeps running.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from keel_core.config import load_text
from keel_core.errors import ConfigError, KeelError
from keel_supervisor.model import ContainerConfig, RestartPolicy
from keel_supervisor.supervisor import Supervisor

log = logging.getLogger("keel.supervisor.apps")
APP_LABEL = "io.keel.app"
HASH_LABEL = "io.keel.app-hash"
POLL = 1.0


@dataclass(frozen=True)
class App:
    """One valid app file."""

    name: str
    config: ContainerConfig
    digest: str


def load_app(path: Path) -> App:
    """Read and validate one app file (raises :class:`ConfigError` naming file:line:key)."""
    text = path.read_text(encoding="utf-8")
    config = load_text(text, ContainerConfig, filename=str(path))
    name = config.name or path.stem
    updates: dict[str, object] = {"name": name}
    if "restart" not in config.model_fields_set:
        updates["restart"] = RestartPolicy.parse("unless-stopped")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    labels = {**config.labels, APP_LABEL: name, HASH_LABEL: digest}
    updates["labels"] = labels
    return App(name, config.model_copy(update=updates), digest)


def scan(directory: Path) -> tuple[dict[str, App], list[str]]:
    """Valid apps by name, and the problems of the invalid files."""
    apps: dict[str, App] = {}
    problems: list[str] = []
    files = (
        sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]) if directory.is_dir() else []
    )
    for path in files:
        try:
            app = load_app(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror}")
            continue
        if app.name in apps:
            problems.append(f"{path}: app name {app.name!r} is used by another file too")
            continue
        apps[app.name] = app
    return apps, problems


class AppReconciler:
    """Keeps the containers of ``directory``'s apps in line with the files."""

    def __init__(self, supervisor: Supervisor, directory: Path) -> None:
        self.supervisor = supervisor
        self.directory = directory
        self.problems: list[str] = []
        self._seen: dict[Path, float] = {}
        self._thread: threading.Thread | None = None

    def current(self) -> dict[str, tuple[str, str]]:
        """Containers that belong to apps: app name -> (container id, file digest)."""
        out = {}
        for cid in self.supervisor.ids():
            labels = self.supervisor.resolve(cid).config().labels
            if APP_LABEL in labels:
                out[labels[APP_LABEL]] = (cid, labels.get(HASH_LABEL, ""))
        return out

    def current_names(self) -> dict[str, str]:
        """App name -> container id, for ``keel container apps``."""
        return {name: cid for name, (cid, _) in self.current().items()}

    def reconcile(self) -> list[str]:
        """One pass; returns what it did, for logs and tests."""
        apps, problems = scan(self.directory)
        for problem in problems:
            if problem not in self.problems:
                log.error("app file rejected: %s", problem)
        self.problems = problems
        actions = []
        running = self.current()
        broken = {p.split(":", 1)[0] for p in problems}
        for name, (cid, _) in running.items():
            stale_file = any(Path(b).stem == name for b in broken)
            if name not in apps and not stale_file:
                self.supervisor.remove(cid, force=True)
                actions.append(f"removed {name}")
        for name, app in apps.items():
            try:
                if name in running and running[name][1] != app.digest:
                    self.supervisor.remove(running[name][0], force=True)
                    self.supervisor.run(app.config)
                    actions.append(f"replaced {name}")
                elif name not in running:
                    self.supervisor.run(app.config)
                    actions.append(f"started {name}")
            except KeelError as exc:
                log.error("app %s: %s", name, exc)
                self.problems.append(f"app {name}: {exc}")
        for action in actions:
            log.info("apps: %s", action)
        return actions

    def changed(self) -> bool:
        """Whether any app file appeared, changed or went away since the last look."""
        now: dict[Path, float] = {}
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.suffix in (".yaml", ".yml"):
                    try:
                        now[path] = path.stat().st_mtime
                    except OSError:
                        continue
        if now != self._seen:
            self._seen = now
            return True
        return False

    def start(self, stopping: threading.Event) -> None:
        """Reconcile now, then again whenever the directory changes, until ``stopping``."""
        self.changed()
        self.reconcile()

        def loop() -> None:
            while not stopping.wait(POLL):
                if self.changed():
                    try:
                        self.reconcile()
                    except KeelError as exc:
                        log.error("apps: %s", exc)

        self._thread = threading.Thread(target=loop, name="apps", daemon=True)
        self._thread.start()
