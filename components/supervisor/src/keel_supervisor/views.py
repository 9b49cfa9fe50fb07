"""How containers are shown: ``ps`` rows and ``inspect`` documents (plain JSON-able dicts)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from keel_supervisor.state import ContainerDir


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} seconds"


def summary(cdir: ContainerDir, *, alive: bool) -> dict[str, Any]:
    """One ``ps`` row."""
    record, status, config = cdir.record(), cdir.status(), cdir.config()
    now = time.time()
    state = status.state
    if state in ("running", "restarting") and not alive:
        state = "dead"  # the monitor went away without saying so (node crash)
    if state == "running":
        text = f"Up {_ago(now - status.started_at)}"
        if status.health:
            text += f" ({status.health})"
    elif state == "restarting":
        text = f"Restarting ({status.exit_code}) {_ago(now - status.finished_at)} ago"
    elif state == "created":
        text = "Created"
    else:
        text = f"Exited ({status.exit_code}) {_ago(now - status.finished_at)} ago"
        if status.error:
            text += f": {status.error}"
    return {
        "id": cdir.id,
        "name": record.name,
        "image": config.image,
        "command": " ".join(config.command or config.entrypoint or []),
        "state": state,
        "status": text,
        "health": status.health,
        "ports": [
            f"{p.host_ip}:{p.host_port}->{p.container_port}/{p.protocol}" for p in config.ports
        ],
        "ip": record.ip,
        "created": record.created,
        "service": config.service,
    }


def inspect(cdir: ContainerDir, *, alive: bool) -> dict[str, Any]:
    """Everything known about one container."""
    return {
        **summary(cdir, alive=alive),
        "config": cdir.config().model_dump(mode="json"),
        "record": asdict(cdir.record()),
        "status_detail": asdict(cdir.status()),
        "path": str(cdir.path),
    }
