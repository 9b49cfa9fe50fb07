"""keel-core's subcommands: ``plugins``, ``platforms``, ``health``."""

from __future__ import annotations

import json
import subprocess

import click

from keel_core import plugins
from keel_core.cli import plugin_manager
from keel_core.types import NOT_APPLICABLE, HealthCheck, Platform


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def plugins_command(as_json: bool) -> None:
    """List loaded plugins: name, version, origin, and the hooks each implements."""
    pm = plugin_manager()
    infos = sorted(pm.infos.values(), key=lambda i: i.name)
    if as_json:
        rows = [vars(i) for i in infos]
        click.echo(json.dumps({"plugins": rows, "disabled": sorted(pm.disabled)}, indent=2))
        return
    from rich.console import Console  # noqa: PLC0415 - rich costs every keel command 0.2 s
    from rich.table import Table  # noqa: PLC0415

    table = Table("name", "version", "distribution", "location", "hooks", box=None)
    for info in infos:
        hooks = ", ".join(h.removeprefix("keel_") for h in info.hooks) or "(none yet)"
        table.add_row(info.name, info.version, info.distribution, info.location, hooks)
    console = Console(width=200)
    console.print(table)
    if pm.disabled:
        console.print(f"disabled by {plugins.DISABLE_ENV}: {', '.join(sorted(pm.disabled))}")


@click.command("platforms")
def platforms_command() -> None:
    """List the platforms that plugins provide and the formats each makes."""
    pm = plugin_manager()
    found: list[Platform] = plugins.collect(pm.hook.keel_platforms())
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table("platform", "formats", "description", box=None)
    for platform in sorted(found, key=lambda p: p.name):
        table.add_row(
            platform.name, ", ".join(f.name for f in platform.formats), platform.description
        )
    Console(width=200).print(table)


@click.command("health")
@click.option("--list", "only_list", is_flag=True, help="list the checks without running them")
def health_command(only_list: bool) -> None:
    """Run every health check on this machine; exit 1 if any fails."""
    pm = plugin_manager()
    checks: list[HealthCheck] = plugins.collect(pm.hook.keel_health_checks())
    failed = 0
    for check in checks:
        if only_list:
            click.echo(f"{check.name}: {check.description}")
            continue
        status, output = _run(check)
        if check.unit is not None and status == NOT_APPLICABLE:
            click.echo(f"skip {check.name}: {check.unit} is not on this machine")
            continue
        ok = status == 0
        click.echo(f"{'ok  ' if ok else 'FAIL'} {check.name}" + ("" if ok else f": {output}"))
        failed += not ok
    if failed:
        raise SystemExit(1)


def _run(check: HealthCheck) -> tuple[int | None, str]:
    """Exit status (``None`` on timeout) and output of one check run here."""
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", check.script()],
            capture_output=True,
            text=True,
            timeout=check.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {check.timeout:g} s"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


ALL = [plugins_command, platforms_command, health_command]
