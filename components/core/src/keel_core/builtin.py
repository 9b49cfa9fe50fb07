"""keel-core's own plugin: the basic CLI commands and the base health checks."""

from __future__ import annotations

from collections.abc import Sequence

import click

from keel_core import commands
from keel_core.hookspecs import hookimpl
from keel_core.types import HealthCheck


@hookimpl
def keel_cli(cli: click.Group) -> None:
    """Add ``keel plugins``, ``keel platforms`` and ``keel health``."""
    for command in commands.ALL:
        cli.add_command(command)


@hookimpl
def keel_health_checks() -> Sequence[HealthCheck]:
    """The checks every Keel machine must pass: what kola's base gate looks at."""
    return [
        HealthCheck(
            "system-running",
            "state=$(systemctl is-system-running --wait); echo $state; test $state = running",
            "systemd reached a running state with no failed unit",
        ),
        HealthCheck(
            "no-failed-units",
            'test -z "$(systemctl list-units --failed --plain --no-legend)" '
            "|| { systemctl list-units --failed --plain --no-legend; false; }",
            "no unit is in the failed state",
        ),
        HealthCheck(
            "usr-read-only",
            "findmnt -n -o OPTIONS /usr | tr , '\\n' | grep -qx ro",
            "/usr is mounted read-only",
        ),
        HealthCheck(
            "machine-id",
            "test -s /etc/machine-id && ! grep -q uninitialized /etc/machine-id",
            "the machine has its own machine-id",
        ),
    ]
