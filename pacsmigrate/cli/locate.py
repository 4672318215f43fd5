"""`locate`: where one source file now lives, for the path the RIS knows."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .. import index as index_mod
from ..checkpoint import Checkpoint
from ..paths import shown
from ..ris import PrefixMap
from .common import B64_OPTION, handle_errors, state_option
from .index import map_prefix_option


@click.command()
@click.argument("source_path")
@state_option()
@map_prefix_option()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@B64_OPTION
@handle_errors
def locate(source_path: str, state_dir: Path, map_prefix: tuple[str, ...], as_json: bool,
           b64: bool) -> None:
    """Print where SOURCE_PATH now lives: object URI, key, offset, length, blake3, UIDs.

    SOURCE_PATH may be relative (it is also tried made absolute), a `\\xNN`-escaped name from
    the export, or, with the --map-prefix rules the index was exported with, the path as the
    RIS writes it; or, with --b64, the base64 of its exact bytes. Exit status 1 if it is not
    in the index.
    """
    if not source_path:
        raise click.UsageError("SOURCE_PATH is empty")
    mapping = PrefixMap.parse(map_prefix)
    path: str | bytes = index_mod.decode_b64_path(source_path) if b64 else source_path
    cp = Checkpoint(state_dir, readonly=True)
    try:
        found = index_mod.locate(cp, path, mapping=mapping, exact=b64)
    finally:
        cp.close()
    if found is None:
        tried = shown(os.fsencode(path)) if b64 else ", ".join(
            shown(p) for p in index_mod.candidates(path, mapping=mapping))
        click.echo(f"not in the index: {shown(os.fsencode(path))} (tried {tried})",
                   err=True)
        sys.exit(1)
    doc = found.to_json()
    if as_json:
        click.echo(json.dumps(doc, ensure_ascii=False))
        return
    width = max(map(len, doc))
    for name, value in doc.items():
        if value != "":
            click.echo(f"{name:<{width}}  {value}")
