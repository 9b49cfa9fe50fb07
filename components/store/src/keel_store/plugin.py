"""The keel_store plugin: the store daemon in images, and its health check.

The daemon runs as ``keel-store.service`` with etcd's flags taken from
``ETCD_*`` variables in ``/etc/keel/store.env`` (factory defaults shipped in
``/usr/share/keel/store.env``), so a node's cluster settings are plain etcd settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from keel_core.hookspecs import hookimpl
from keel_core.types import FileContribution, HealthCheck, ImageContribution

if TYPE_CHECKING:
    from keel_core.schemas import ImageDefinition  # pydantic: not for every `keel` command

UNIT = """\
[Unit]
Description=Keel store (etcd v3 compatible key-value store)
Documentation=file:///usr/share/doc/keel/store.md
After=network-online.target
Wants=network-online.target

[Service]
# READY=1 once the client port listens (what etcd's unit does too): the boot gate's
# is-system-running --wait and units after this one then find the store answering.
Type=notify
TimeoutStartSec=300
User=keel-store
EnvironmentFile=/usr/share/keel/store.env
EnvironmentFile=-/etc/keel/store.env
ExecStart=/usr/bin/python3 -m keel_store.daemon
Restart=on-failure
RestartSec=2s
StateDirectory=keel-store
LimitNOFILE=40000
# Snapshot children start at idle priority and may come back to nice 0 (no higher)
# after a while: a machine that is never idle still gets its snapshots.
LimitNICE=+0

[Install]
WantedBy=multi-user.target
"""

DEFAULTS = """\
# Factory defaults of keel-store; override in /etc/keel/store.env (etcd's variables).
ETCD_NAME=default
ETCD_DATA_DIR=/var/lib/keel-store
ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379
ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379
ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380
"""


@hookimpl
def keel_image_contribution(image: ImageDefinition) -> ImageContribution | None:
    """The daemon, its unit, its user and its defaults, when ``store`` is in the image."""
    if "store" not in image.components:
        return None
    return ImageContribution(
        name="store",
        # grpcio/protobuf come with the keel-store distribution (pinned): Debian's
        # python3-grpcio 1.51 / python3-protobuf 3.21 cannot load stubs made by protoc 7.
        packages=["python3"],
        files=[
            FileContribution("/usr/lib/systemd/system/keel-store.service", UNIT.encode()),
            FileContribution("/usr/share/keel/store.env", DEFAULTS.encode()),
        ],
        units=["keel-store.service"],
        sysusers=['u keel-store - "Keel store" /var/lib/keel-store'],
        python_distributions=["keel-store"],
    )


@hookimpl
def keel_health_checks() -> Sequence[HealthCheck]:
    """The local member answers a linearizable read (it has a leader and a quorum)."""
    return [
        HealthCheck(
            name="store-healthy",
            command="python3 -m keel_store.health 127.0.0.1:2379",
            description="keel-store serves a linearizable read on 127.0.0.1:2379",
            timeout=15.0,
            unit="keel-store.service",
        )
    ]
