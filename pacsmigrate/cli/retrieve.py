"""`get` and `restore`: bring instances back, verified by blake3."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click

from ..access import open_migration
from ..restore import Selection, restore
from ..retrieve import Archive, write_file
from .common import handle_errors, state_option


@click.command()
@click.argument("source_path", required=False)
@click.option("--sop", help="Find the instance by SOPInstanceUID instead of path.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write here (default: standard output when it is not a terminal).")
@state_option()
@click.option("--endpoint-url", help="Override the endpoint recorded in the state.")
@handle_errors
def get(source_path: str | None, sop: str | None, output: Path | None, state_dir: Path,
        endpoint_url: str | None) -> None:
    """Fetch one instance by its original SOURCE_PATH (or --sop UID): one range GET."""
    if (source_path is None) == (sop is None):
        raise click.UsageError("give either SOURCE_PATH or --sop UID")
    if output is None and sys.stdout.isatty():
        raise click.UsageError("standard output is a terminal: give -o FILE")

    async def fetch() -> tuple[bytes, int]:
        async with open_migration(state_dir, endpoint_url=endpoint_url) as opened:
            archive = Archive(opened)
            row = archive.locate(source_path, sop=sop)
            return await archive.read(source_path, sop=sop), int(row["mtime_ns"])

    data, mtime_ns = asyncio.run(fetch())
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_file(output, data, mtime_ns=mtime_ns)
        click.echo(f"{len(data):,} bytes written to {output} (blake3 verified)", err=True)


@click.command("restore")
@state_option()
@click.option("--study", "study_uid", help="Restore one study (StudyInstanceUID).")
@click.option("--path-prefix", help="Restore files whose original path starts with this.")
@click.option("--all", "everything", is_flag=True, help="Restore everything.")
@click.option("--to", "to", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory to recreate the original paths under.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256))
@click.option("--endpoint-url", help="Override the endpoint recorded in the state.")
@click.option("--progress/--no-progress", default=None)
@handle_errors
def restore_cmd(state_dir: Path, study_uid: str | None, path_prefix: str | None,
                everything: bool, to: Path, concurrency: int, endpoint_url: str | None,
                progress: bool | None) -> None:
    """Recreate original paths under --to, byte-identical; re-run to resume a drill."""
    sel = Selection(study_uid, os.fsencode(path_prefix) if path_prefix else None, everything)

    async def go() -> tuple[int, int, int, list[tuple[str, str]], int]:
        async with open_migration(state_dir, endpoint_url=endpoint_url) as opened:
            r = await restore(opened, sel, to, concurrency=concurrency,
                              progress=sys.stderr.isatty() if progress is None else progress)
            return r.restored, r.already_present, r.bytes, r.failed, r.selected

    restored, present, nbytes, failed, selected = asyncio.run(go())
    click.echo(f"selected: {selected:,} files; restored: {restored:,} ({nbytes / 1e6:,.1f} MB); "
               f"already present and verified: {present:,}; failed: {len(failed):,}")
    for path, reason in failed:
        click.echo(f"FAILED {path}: {reason}", err=True)
    if selected == 0:
        click.echo("nothing matched the selection", err=True)
    sys.exit(1 if failed or selected == 0 else 0)
