"""What a container is: the settings a user gives (``run`` flags, app YAML) and what we record.

:class:`ContainerConfig` is both the schema of a declarative app's ``container:`` block
(loaded through :func:`keel_core.config.load_file`, so mistakes are reported with file,
line and key) and the document the supervisor stores beside each container. Values use
docker's spelling where one exists (``on-failure:3``, ``8080:80``, ``512m``) so that
people can carry their habits over.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keel_supervisor.errors import SupervisorError as SupervisorError  # noqa: PLC0414 - re-exported

_SIZE = re.compile(r"^(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<u>[bkmgt]?)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"


def parse_size(text: str | int) -> int:
    """Bytes from ``512m``, ``1g``, ``1048576`` (docker's units, powers of 1024)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 64m, 1g or a number of bytes)")
    return int(float(match["n"]) * _UNITS[match["u"].lower()])


class Schema(BaseModel):
    """Strict keys (a typo is an error with a suggestion), frozen values."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartPolicy(Schema):
    """When a container that ended is started again (docker's ``--restart``)."""

    name: Literal["no", "on-failure", "always", "unless-stopped"] = "no"
    max_retries: int = Field(
        default=0, ge=0, description="on-failure only: give up after N restarts (0 = never)"
    )

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """``no``, ``on-failure``, ``on-failure:3``, ``always``, ``unless-stopped``."""
        name, _, count = text.partition(":")
        if name not in ("no", "on-failure", "always", "unless-stopped"):
            raise ValueError(
                f"unknown restart policy {text!r}; use no, on-failure[:N], always or unless-stopped"
            )
        if count and name != "on-failure":
            raise ValueError(f"only on-failure takes a retry count, not {text!r}")
        try:
            retries = int(count) if count else 0
        except ValueError:
            raise ValueError(f"retry count in {text!r} is not a number") from None
        return cls(name=name, max_retries=retries)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.name}:{self.max_retries}" if self.max_retries else self.name


class HealthCheck(Schema):
    """A command run inside the container to tell whether it works (docker's HEALTHCHECK)."""

    test: list[str] = Field(description="argv run in the container; exit 0 = healthy")
    interval: float = Field(default=30.0, gt=0, description="seconds between checks")
    timeout: float = Field(
        default=30.0, gt=0, description="seconds before a check counts as failed"
    )
    retries: int = Field(default=3, ge=1, description="consecutive failures that make it unhealthy")
    start_period: float = Field(
        default=0.0, ge=0, description="seconds after start when failures don't count"
    )


class PortMapping(Schema):
    """A container port published on the host (``-p [ip:]host:container[/tcp]``)."""

    host_ip: str = "127.0.0.1"
    host_port: int = Field(ge=1, le=65535)
    container_port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp"] = "tcp"

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        """``8080:80``, ``127.0.0.1:8080:80``, ``8080:80/tcp``."""
        spec, _, proto = text.partition("/")
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"bad port mapping {text!r}; use HOST:CONTAINER or IP:HOST:CONTAINER")
        fields: dict[str, object] = {"protocol": proto or "tcp"}
        if len(parts) == 3:
            fields["host_ip"] = parts.pop(0)
        try:
            fields["host_port"], fields["container_port"] = int(parts[0]), int(parts[1])
        except ValueError:
            raise ValueError(f"bad port mapping {text!r}: ports are numbers") from None
        return cls.model_validate(fields)


class Mount(Schema):
    """A bind mount (``source`` is a host path) or a named volume (``source`` is a name)."""

    source: str
    target: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Mount:
        """``/host:/ctr``, ``/host:/ctr:ro``, ``name:/ctr``."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/"):
            raise ValueError(f"bad volume {text!r}; use SOURCE:/TARGET[:ro]")
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise ValueError(f"bad volume mode {parts[2]!r} in {text!r}; use ro or rw")
        return cls(source=parts[0], target=parts[1], read_only=len(parts) == 3 and parts[2] == "ro")

    @property
    def is_bind(self) -> bool:
        """A bind mount names a host path; anything else is a named volume."""
        return self.source.startswith("/")


class Resources(Schema):
    """Limits enforced through the runtime's cgroups."""

    memory: int | None = Field(
        default=None, description="bytes (or 64m, 1g); over it the kernel OOM-kills"
    )
    cpus: float | None = Field(
        default=None, gt=0, description="CPU time, in CPUs (0.5 = half a core)"
    )
    pids: int | None = Field(default=None, ge=1, description="most processes/threads at once")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> object:
        return parse_size(value) if isinstance(value, str) else value


class ContainerConfig(Schema):
    """Everything needed to (re)create a container; the ``container:`` block of an app."""

    image: str = Field(description="image reference or id (or a rootfs path with rootfs: true)")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    command: list[str] | None = Field(default=None, description="replaces the image's Cmd")
    entrypoint: list[str] | None = Field(
        default=None, description="replaces the image's Entrypoint"
    )
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    user: str | None = Field(default=None, description="uid[:gid] (numeric)")
    hostname: str | None = None
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    healthcheck: HealthCheck | None = None
    ports: list[PortMapping] = Field(default_factory=list)
    volumes: list[Mount] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    network: Literal["bridge", "host", "none"] = "bridge"
    read_only: bool = Field(default=False, description="mount the root filesystem read-only")
    no_new_privileges: bool = True
    cap_add: list[str] = Field(default_factory=list)
    cap_drop: list[str] = Field(default_factory=list)
    stop_signal: str = "TERM"
    stop_timeout: float = Field(default=10.0, ge=0)
    service: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="register published ports under this name",
    )
    labels: dict[str, str] = Field(default_factory=dict)
    rootfs: bool = Field(default=False, description="image is a directory to use as the only layer")

    @field_validator("restart", mode="before")
    @classmethod
    def _restart(cls, value: object) -> object:
        return RestartPolicy.parse(value) if isinstance(value, str) else value

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: object) -> object:
        if isinstance(value, list):
            return [PortMapping.parse(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("volumes", mode="before")
    @classmethod
    def _volumes(cls, value: object) -> object:
        if isinstance(value, list):
            return [Mount.parse(v) if isinstance(v, str) else v for v in value]
        return value
