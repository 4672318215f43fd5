"""`synth`: make a synthetic PACS tree for demos, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import click

from ..synth import LAYOUTS
from .common import handle_errors


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--studies", default=10, show_default=True, type=click.IntRange(1),
              help="How many studies to write.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="The same seed writes the same tree.")
@click.option("--layout", default="patient", show_default=True,
              type=click.Choice(LAYOUTS),
              help="Folder layout, as PACS write them: by patient, by date received, as "
                   "a CD, hashed, as storescp writes, or a mix.")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Shrink image counts and sizes (tests use 0.01).")
@handle_errors
def synth(directory: Path, studies: int, seed: int, layout: str, scale: float) -> None:
    """Make a synthetic PACS tree of valid DICOM files."""
    from ..synth import make_tree

    try:
        summary = make_tree(directory, studies=studies, seed=seed, layout=layout, scale=scale)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(f"{summary.files:,} files, {summary.bytes / 1e6:,.1f} MB, "
               f"{summary.studies:,} studies in {directory} (layout {layout})")
