"""`index rebuild`: recover a lost state directory from the store's manifests."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..backends import open_backend
from ..checkpoint import Checkpoint
from ..config import TransferConfig
from ..rebuild import rebuild
from .common import destination, handle_errors, run_main, state_option, store_options


@click.command("rebuild")
@click.argument("dest")
@store_options
@state_option(must_exist=False)
@click.option("--progress/--no-progress", default=None,
              help="A progress bar (default: when stderr is a terminal).")
@click.option("--ca-bundle", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="PEM file of a private CA to trust (certificates are always checked).")
@handle_errors
def rebuild_cmd(dest: str, endpoint_url: str | None, provider: str | None, region: str | None,
            profile: str | None, addressing_style: str | None, sse: str | None,
            sse_kms_key_id: str | None, sse_c_key_file: str | None,
            encryption_scope: str | None, state_dir: Path,
                progress: bool | None, ca_bundle: Path | None) -> None:
    """Rebuild the index of DEST (s3://bucket/prefix, /dir or file:///dir) into a new --state
    from the store alone."""
    where = destination(dest, endpoint_url=endpoint_url, provider=provider, region=region,
                        profile=profile, addressing_style=addressing_style, sse=sse,
                        sse_kms_key_id=sse_kms_key_id,
                        sse_c_key_file=sse_c_key_file,
                        encryption_scope=encryption_scope)

    async def go() -> tuple[int, int, int, list[str], list[str]]:
        cp = Checkpoint(state_dir)
        backend = await open_backend(where, TransferConfig(ca_bundle=ca_bundle))
        try:
            cp.put_meta("ca_bundle", str(ca_bundle.resolve()) if ca_bundle else None)
            r = await rebuild(backend, where, cp,
                              progress=sys.stderr.isatty() if progress is None else progress)
            return r.manifests, r.rows, r.superseded, r.missing_objects, r.unreadable
        finally:
            await backend.close()
            cp.close()

    manifests, rows, superseded, missing, unreadable = run_main(go())
    click.echo(f"rebuilt {rows:,} index rows from {manifests:,} manifests into {state_dir}"
               + (f" ({superseded:,} older versions superseded)" if superseded else ""))
    for key in missing:
        click.echo(f"MISSING object for manifest: {key}", err=True)
    for key in unreadable:
        click.echo(f"UNREADABLE manifest: {key}", err=True)
    sys.exit(1 if missing or unreadable else 0)
