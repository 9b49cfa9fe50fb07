"""The keel_supervisor plugin: how this component hooks into Keel (see keel_core.hookspecs).

It contributes the runc and crun runtimes, the ``keel container`` and ``keel services``
commands, and, for images that include the supervisor, its packages and systemd unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from keel_core.hookspecs import hookimpl
from keel_core.types import ContainerRuntime, FileContribution, ImageContribution

if TYPE_CHECKING:
    import click

    from keel_core.schemas import ImageDefinition

UNIT = """\
[Unit]
Description=Keel supervisor: runs OCI containers and registers their services
After=network-online.target local-fs.target
Wants=network-online.target

[Service]
# READY=1 once the API socket answers: `keel run` right after boot finds the daemon.
Type=notify
TimeoutStartSec=300
ExecStart=/usr/bin/keel container daemon
# Containers have their own monitors: stopping the daemon must not kill them.
KillMode=process
Restart=always
RestartSec=2s
Delegate=yes

[Install]
WantedBy=multi-user.target
"""


NETWORK = b"""\
# The supervisor's bridge and its containers' veth ends are its own: without this, networkd
# matches them with keel-base's DHCP file (any Ethernet link), takes the veths off the
# bridge and containers lose their network.
[Match]
Name=keel0 vk*

[Link]
Unmanaged=yes
"""


@hookimpl
def keel_container_runtimes() -> Sequence[ContainerRuntime]:
    """runc (default everywhere) and crun (preferred less, works around hybrid cgroups)."""
    from keel_supervisor.runtimes import builtin  # noqa: PLC0415 - keep `keel` start-up light

    return builtin()


@hookimpl
def keel_cli(cli: click.Group) -> None:
    """Add ``keel container <verb>``, the docker verbs at top level, and ``keel services``."""
    from keel_supervisor.cli import TOP_LEVEL, container, services_command  # noqa: PLC0415

    cli.add_command(container)
    cli.add_command(services_command)
    for verb in TOP_LEVEL:
        if verb not in cli.commands:  # never shadow another component's command
            cli.add_command(container.commands[verb], verb)


@hookimpl
def keel_image_contribution(image: ImageDefinition) -> ImageContribution | None:
    """The daemon, its unit, the runtimes and the network tools it drives."""
    if "supervisor" not in image.components:
        return None
    return ImageContribution(
        name="supervisor",
        packages=["runc", "crun", "iproute2", "iptables"],
        files=[
            FileContribution("/usr/lib/systemd/system/keel-supervisor.service", UNIT.encode()),
            FileContribution("/usr/lib/systemd/network/10-keel-supervisor.network", NETWORK),
            FileContribution(
                "/etc/keel/apps/README",
                b"Declarative apps: one <name>.yaml per container; see docs/supervisor.md.\n",
            ),
        ],
        units=["keel-supervisor.service"],
        kernel_modules=["overlay", "veth", "bridge", "br_netfilter"],
        python_distributions=["keel-supervisor"],
    )
