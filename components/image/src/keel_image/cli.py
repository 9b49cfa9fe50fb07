"""``keel build [definition] [--platform NAME ...] [--out DIR] [--no-cache]``."""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.command("build")
@click.argument("definition", default="images/keel.yaml", type=click.Path(path_type=Path))
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    help="only these platforms' outputs (default: the definition's list)",
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="output directory (default: ./out)")  # fmt: skip
@click.option("--no-cache", is_flag=True, help="rebuild every stage")
@click.option("--quiet", "-q", is_flag=True, help="no progress display")
@click.option("--verbose", "-v", is_flag=True, help="log each step")
def build_command(
    definition: Path,
    *,
    platforms: tuple[str, ...],
    out_dir: Path | None,
    no_cache: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Build a bootable Keel disk from an image definition (images/keel.yaml)."""
    # Imported here: every `keel` command loads this plugin, and the pipeline's imports
    # take about a second (pydantic schemas, yaml, ...); only `keel build` needs them.
    from keel_image.cache import StageCache  # noqa: PLC0415
    from keel_image.pipeline import build  # noqa: PLC0415

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(name)s %(levelname)s %(message)s",
    )
    image = build(
        definition,
        out_dir=out_dir,
        progress=not quiet,
        cache=StageCache(enabled=not no_cache),
        platforms=platforms or None,
    )
    click.echo(str(image.directory))
