"""`get` and `restore`: bring instances back, verified by blake3."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from ..access import open_migration
from ..backends.base import PRIORITIES
from ..errors import ObjectArchivedError
from ..index import decode_b64_path
from ..restore import RestoreRequest, RestoreResult, Selection, request_restores, restore
from ..retrieve import lookup, read_row, write_file
from .common import B64_OPTION, SSE_C_OPTION, handle_errors, run_main, state_option


def _restore_options(fn: Any) -> Any:
    fn = click.option("--restore-priority", type=click.Choice(PRIORITIES), default="Standard",
                      show_default=True,
                      help="With --request-restore: how fast (and dear) the store restores: "
                           "S3 Bulk/Standard/Expedited, Azure Standard/High.")(fn)
    fn = click.option("--restore-days", type=click.IntRange(1, 365), default=7,
                      show_default=True,
                      help="With --request-restore, on S3: days the restored copy stays.")(fn)
    return click.option("--request-restore", is_flag=True,
                        help="Ask the store to restore files' objects found in an archive "
                             "tier (S3 Glacier, Deep Archive; Azure Archive); then re-run "
                             "once they are ready.")(fn)


_WAIT = ("re-run this command once they are ready (S3: minutes with Expedited, 3-5 h "
         "Standard, 5-12 h Bulk, up to 48 h from Deep Archive; Azure: up to 15 h)")


def _said(requests: Counter[str]) -> str:
    return ", ".join(f"{n:,} {status}" for status, n in sorted(requests.items()))


@click.command()
@click.argument("source_path", required=False)
@click.option("--sop", help="Find the instance by SOPInstanceUID instead of path.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write here (default: standard output when it is not a terminal).")
@state_option()
@click.option("--endpoint-url", help="Override the endpoint recorded in the state.")
@_restore_options
@SSE_C_OPTION
@B64_OPTION
@handle_errors
def get(source_path: str | None, sop: str | None, output: Path | None, state_dir: Path,
        endpoint_url: str | None, request_restore: bool, restore_days: int,
        restore_priority: str, sse_c_key_file: str | None, b64: bool) -> None:
    """Fetch one instance by its original SOURCE_PATH (or --sop UID): one range GET."""
    if (source_path is None) == (sop is None):
        raise click.UsageError("give either SOURCE_PATH or --sop UID")
    if not (source_path or sop):
        raise click.UsageError("SOURCE_PATH or --sop UID is empty")
    if output is None and sys.stdout.isatty():
        raise click.UsageError("standard output is a terminal: give -o FILE")
    if b64 and sop is not None:
        raise click.UsageError("--b64 is for SOURCE_PATH, not --sop")
    path = decode_b64_path(source_path) if b64 and source_path else source_path

    async def fetch() -> tuple[bytes, int] | str:
        async with open_migration(state_dir, endpoint_url=endpoint_url,
                                  sse_c_key_file=sse_c_key_file) as opened:
            row = lookup(opened.cp, path=path, sop=sop, exact=b64)
            try:
                return await read_row(opened.backend, row), int(row["mtime_ns"])
            except ObjectArchivedError:
                if not request_restore:
                    raise
                asked = await request_restores(opened.backend, [row["key"]], RestoreRequest(
                    restore_days, restore_priority))
                return _said(asked)

    got = run_main(fetch())
    if isinstance(got, str):
        click.echo(f"the file's object is in an archive tier: restore {got}; {_WAIT}",
                   err=True)
        sys.exit(1)
    data, mtime_ns = got
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
              help="Directory to recreate the original paths under (made if missing).")
@click.option("--strip-prefix", metavar="PREFIX",
              help="Leave this leading part out of every path: with /mnt/pacs, "
                   "/mnt/pacs/2015/a.dcm is restored as TO/2015/a.dcm (every selected file "
                   "must lie under it).")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Objects read from the store at once.")
@click.option("--endpoint-url", help="Override the endpoint recorded in the state.")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar (default: when stderr is a terminal).")
@_restore_options
@SSE_C_OPTION
@handle_errors
def restore_cmd(state_dir: Path, study_uid: str | None, path_prefix: str | None,
                everything: bool, to: Path, strip_prefix: str | None, concurrency: int,
                endpoint_url: str | None,
                progress: bool | None, request_restore: bool, restore_days: int,
                restore_priority: str, sse_c_key_file: str | None) -> None:
    """Recreate original paths under --to, byte-identical; re-run to resume a drill."""
    sel = Selection(study_uid, os.fsencode(path_prefix) if path_prefix else None, everything)

    async def go() -> RestoreResult:
        async with open_migration(state_dir, endpoint_url=endpoint_url,
                                  sse_c_key_file=sse_c_key_file) as opened:
            return await restore(
                opened, sel, to, concurrency=concurrency,
                progress=sys.stderr.isatty() if progress is None else progress,
                request=RestoreRequest(restore_days, restore_priority)
                if request_restore else None,
                strip_prefix=os.fsencode(strip_prefix) if strip_prefix else b"")

    r = run_main(go())
    click.echo(f"selected: {r.selected:,} files; restored: {r.restored:,} "
               f"({r.bytes / 1e6:,.1f} MB); already present and verified: "
               f"{r.already_present:,}; failed: {len(r.failed):,}")
    if r.replaced:
        click.echo(f"replaced: {r.replaced:,} of the files restored were at their targets "
                   "with other bytes, which the migrated ones took the place of")
    if r.archived:
        files = sum(r.archived.values())
        click.echo(f"in an archive tier: {files:,} files in {len(r.archived):,} objects; "
                   + (f"restore {_said(r.requests)}; {_WAIT}" if r.requests else
                      "add --request-restore to ask the store for them"))
    for path, reason in r.failed:
        click.echo(f"FAILED {path}: {reason}", err=True)
    if r.selected == 0:
        click.echo("nothing matched the selection", err=True)
    sys.exit(1 if r.failed or r.archived or r.selected == 0 else 0)
