"""`index ...`: the RIS path -> object index."""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import index as index_mod
from ..checkpoint import Checkpoint
from ..errors import StateError
from ..ris import DIALECTS, PrefixMap, SqlTarget
from ..statemerge import merge_into
from .common import handle_errors, state_option

F = TypeVar("F", bound=Callable[..., Any])


def map_prefix_option() -> Callable[[F], F]:
    """--map-prefix OLD=NEW (repeatable), shared with `locate`."""
    return click.option(
        "--map-prefix", "map_prefix", multiple=True, metavar="OLD=NEW",
        help=r"Write paths under OLD as NEW, e.g. '/mnt/pacs/2015=\\nas01\pacs\2015' "
             r"(repeatable; the longest OLD wins; a NEW with backslashes turns the rest's / "
             r"into \).")


@click.group()
def index() -> None:
    """The RIS path -> object index."""


@index.command("export")
@state_option()
@click.option("--format", "fmt", type=click.Choice(index_mod.FORMATS), default="csv",
              show_default=True, help="csv (a header row, then a row a file), jsonl (a JSON "
                                      "object a line), sqlite (a database file, -o needed) or "
                                      "sql (statements that load the index into a RIS).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="File (default stdout; required for sqlite, which it replaces).")
@map_prefix_option()
@click.option("--table", default="images", show_default=True, help="sql: the RIS table.")
@click.option("--path-column", default="file_path", show_default=True,
              help="sql: its column holding the file path.")
@click.option("--uri-column", default="object_uri", show_default=True,
              help="sql: its column to receive the object address.")
@click.option("--dialect", type=click.Choice(DIALECTS), default="standard", show_default=True,
              help="sql: 'standard' doubles quotes and keeps backslashes literal (SQLite, "
                   "PostgreSQL; MySQL only with NO_BACKSLASH_ESCAPES); 'mysql' also "
                   "escapes backslashes.")
@handle_errors
def export(state_dir: Path, fmt: str, output: Path | None, map_prefix: tuple[str, ...],
           table: str, path_column: str, uri_column: str, dialect: str) -> None:
    """One row per source file: path, key, offset, length, blake3, UIDs, object_uri.

    Formats: csv, jsonl, sqlite (a file with table `images`, indexed on source_path and
    sop_uid), sql (UPDATE statements setting the RIS's URI column, in one transaction).
    Text is UTF-8. object_uri is SCHEME://BUCKET/KEY#offset=N&length=N.
    """
    mapping = PrefixMap.parse(map_prefix)
    target = SqlTarget(table, path_column, uri_column, dialect) if fmt == "sql" else None
    if fmt == "sqlite" and output is None:
        raise click.UsageError("--format sqlite writes a file: give -o FILE")
    cp = Checkpoint(state_dir, readonly=True)
    try:
        if fmt == "sqlite":
            assert output is not None
            n = index_mod.export_sqlite(cp, output, mapping=mapping)
        elif output is None:
            # UTF-8 whatever the locale: paths and SQL must reach the RIS unchanged.
            out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
            try:
                index_mod.export(cp, out, fmt=fmt, mapping=mapping, sql=target)
            finally:
                out.flush()
                out.detach()
            return
        else:
            with open(output, "w", encoding="utf-8", newline="") as f:
                n = index_mod.export(cp, f, fmt=fmt, mapping=mapping, sql=target)
        click.echo(f"{n:,} rows written to {output}", err=True)
    finally:
        cp.close()


@index.command("merge")
@click.argument("states", nargs=-1, required=True,
                type=click.Path(path_type=Path, exists=True, file_okay=False))
@state_option(must_exist=False)
@handle_errors
def merge(states: tuple[Path, ...], state_dir: Path) -> None:
    """Join the states of a migration's slices (`migrate --shard K/N`) into one: --state.

    The merged state is new (a --state that is not empty is refused) and is read by
    verify, get, locate, restore and `index export` like any other. Each STATE must be
    idle (no run using it) and settled (no uploads in doubt).
    """
    given = [p.resolve() for p in states]
    if state_dir.resolve() in given:
        raise click.UsageError("--state is the merged state: give a new directory, not one "
                               "of the STATEs")
    if len(set(given)) != len(given):
        raise click.UsageError("a STATE is given twice")
    if state_dir.exists() and (not state_dir.is_dir() or any(state_dir.iterdir())):
        raise StateError(f"{state_dir} is not empty: merge into a new --state (merge again "
                         "from the slices after they change)")
    # Built beside the target and renamed into place: an interrupted merge leaves only the
    # `.merging` directory, which the next merge removes.
    building = state_dir.with_name(state_dir.name + ".merging")
    shutil.rmtree(building, ignore_errors=True)
    out = Checkpoint(building)
    try:
        result = merge_into(out, list(states))
    except BaseException:
        out.close()
        shutil.rmtree(building, ignore_errors=True)
        raise
    out.close()
    if state_dir.exists():
        state_dir.rmdir()
    os.replace(building, state_dir)
    slices = ", ".join(sorted(result.shards, key=_slice_order)) or "none"
    click.echo(f"merged {result.states} state(s) (slices: {slices}) into {state_dir}: "
               f"{result.rows:,} index rows in {result.objects:,} objects; "
               f"{result.problems:,} files not migrated; {result.pending:,} still pending; "
               f"{result.superseded:,} older versions replaced; "
               f"{result.conflicts:,} SOP conflicts")
    _check_slices(result.shards)


def _slice_order(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    return int(n), int(k)


def _check_slices(shards: list[str]) -> None:
    """Warn when the slices merged do not make whole sets (one missing, or two sizes)."""
    counts = {int(s.partition("/")[2]) for s in shards}
    for n in sorted(counts):
        have = {int(s.partition("/")[0]) for s in shards if s.endswith(f"/{n}")}
        missing = sorted(set(range(n)) - have)
        if missing:
            click.echo(f"WARNING: slices {', '.join(f'{k}/{n}' for k in missing)} are not "
                       "merged: their files are not in this index", err=True)
    if len(counts) > 1:
        click.echo("WARNING: slices of different N merged: a file may be in two of them "
                   "(the newer version is kept)", err=True)
