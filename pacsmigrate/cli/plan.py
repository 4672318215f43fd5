"""`plan`: the files a dry run (or an unfinished run) has catalogued, with their hashes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..checkpoint import Checkpoint
from ..plan import FORMATS, export_plan
from .common import handle_errors, state_option


@click.command()
@state_option()
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True,
              help="csv (a header row, then one row a file) or jsonl (one JSON object a line).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="File (default stdout).")
@handle_errors
def plan(state_dir: Path, fmt: str, output: Path | None) -> None:
    """Export the plan: one row per file still to store, with the blake3 a --dry-run read.

    After the migration, `index export` lists the same files with the hashes of the bytes
    stored; the two agree unless a file changed in between.
    """
    cp = Checkpoint(state_dir, readonly=True)
    try:
        if output is None:
            export_plan(cp, sys.stdout, fmt=fmt)
            return
        with open(output, "w", encoding="utf-8", newline="") as out:
            n = export_plan(cp, out, fmt=fmt)
        click.echo(f"{n:,} planned files written to {output}", err=True)
    finally:
        cp.close()
