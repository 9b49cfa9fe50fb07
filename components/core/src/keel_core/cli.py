"""The ``keel`` command. Subcommands come from plugins through the ``keel_cli`` hook."""

from __future__ import annotations

import sys

import click

from keel_core import __version__, plugins
from keel_core.errors import KeelError


class KeelGroup(click.Group):
    """The root group: loads plugins' commands once, and turns Keel errors into messages."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._loaded = False

    def _load(self, ctx: click.Context) -> None:
        if self._loaded:
            return
        self._loaded = True
        pm = plugins.load()
        ctx.meta["keel.plugins"] = pm
        pm.hook.keel_cli(cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load(ctx)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeelError as exc:
            click.secho(f"keel: error: {exc}", fg="red", err=True)
            ctx.exit(2)


def plugin_manager(ctx: click.Context | None = None) -> plugins.KeelPluginManager:
    """The plugin manager of the running ``keel`` command (loaded on first use)."""
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    pm = root.meta.get("keel.plugins")
    if pm is None:
        pm = root.meta["keel.plugins"] = plugins.load()
    return pm


@click.group(cls=KeelGroup)
@click.version_option(__version__, prog_name="keel")
def cli() -> None:
    """Keel: a container-first Linux distribution."""


def main() -> None:
    """Entry point of the ``keel`` script."""
    try:
        cli.main(prog_name="keel")
    except KeelError as exc:  # raised while loading plugins, before a command runs
        click.secho(f"keel: error: {exc}", fg="red", err=True)
        sys.exit(2)
