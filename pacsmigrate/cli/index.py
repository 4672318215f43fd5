"""`index ...`: the RIS path -> object index."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import index as index_mod
from ..checkpoint import Checkpoint
from .common import handle_errors, state_option


@click.group()
def index() -> None:
    """The RIS path -> object index."""


@index.command("export")
@state_option()
@click.option("--format", "fmt", type=click.Choice(index_mod.FORMATS), default="csv",
              show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="File (default stdout).")
@handle_errors
def export(state_dir: Path, fmt: str, output: Path | None) -> None:
    """One row per source file: path, key, offset, length, blake3, UIDs."""
    cp = Checkpoint(state_dir, readonly=True)
    try:
        if output is None:
            index_mod.export(cp, sys.stdout, fmt=fmt)
        else:
            with open(output, "w", encoding="utf-8", newline="") as out:
                n = index_mod.export(cp, out, fmt=fmt)
            click.echo(f"{n:,} rows written to {output}", err=True)
    finally:
        cp.close()
