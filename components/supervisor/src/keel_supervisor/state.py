"""Where containers live on disk, and the records that let a restarted supervisor carry on.

``<root>/containers/<id>/`` holds ``config.json`` (the :class:`ContainerConfig`, written
once), ``record.json`` (what the supervisor decided: image, network address, bundle) and
``status.json`` (written by the container's monitor: running, pid, exit code, health),
``bundle/`` (the OCI bundle; ``rootfs`` is an overlay mount), ``upper/``/``work/`` (the
container's writable layer) and ``logs/``. Every write is atomic (temp file + rename), so
a crash never leaves half a record.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel_supervisor.model import ContainerConfig


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically with ``data`` as JSON."""
    # Compact, in one string: with ``indent`` the json module falls back to its pure
    # Python encoder (8x slower), and json.dump to a file writes hundreds of small
    # pieces. These writes are on the path of every start (``jq .`` shows them indented).
    payload = (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` if there is none yet."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


@dataclass
class Status:
    """What the monitor reports about its container (``status.json``)."""

    state: str = "created"
    """created, running, restarting, exited, stopped (by its user), dead (monitor gone)."""
    pid: int = 0
    monitor_pid: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int | None = None
    oom_killed: bool = False
    restarts: int = 0
    stopped: bool = False
    """The user stopped it; no policy restarts it (unless-stopped remembers this)."""
    health: str = ""
    health_log: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    @classmethod
    def load(cls, path: Path) -> Status:
        """Read ``status.json`` (a fresh status if missing)."""
        data = read_json(path) or {}
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Record:
    """What the supervisor decided when it created the container (``record.json``)."""

    id: str
    name: str
    image_id: str
    created: float
    runtime: str
    ip: str = ""
    netns: str = ""
    image_config: dict[str, Any] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)


class ContainerDir:
    """Paths of one container's directory."""

    def __init__(self, root: Path, container_id: str) -> None:
        self.id = container_id
        self.path = root / "containers" / container_id

    config_file = property(lambda self: self.path / "config.json")
    record_file = property(lambda self: self.path / "record.json")
    status_file = property(lambda self: self.path / "status.json")
    stop_file = property(lambda self: self.path / "stop-request.json")
    bundle = property(lambda self: self.path / "bundle")
    rootfs = property(lambda self: self.path / "bundle" / "rootfs")
    upper = property(lambda self: self.path / "upper")
    work = property(lambda self: self.path / "work")
    logs = property(lambda self: self.path / "logs")
    monitor_file = property(lambda self: self.path / "monitor.json")

    def config(self) -> ContainerConfig:
        """The container's settings."""
        from keel_supervisor.model import ContainerConfig  # noqa: PLC0415 - keeps the monitor light

        return ContainerConfig.model_validate(read_json(self.config_file))

    def record(self) -> Record:
        """The supervisor's record."""
        return Record(**read_json(self.record_file))

    def status(self) -> Status:
        """The monitor's latest report."""
        return Status.load(self.status_file)

    def save_status(self, status: Status) -> None:
        """Write ``status.json`` atomically."""
        write_json(self.status_file, asdict(status))
