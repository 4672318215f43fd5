"""`cleanup`: abort multipart uploads that interrupted runs left behind."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import click

from ..backends import open_backend
from ..backends.base import PendingUpload
from ..backends.multipart import RESUME_MAX_AGE
from ..cleanup import cleanup as run_cleanup
from ..config import TransferConfig
from .common import destination, handle_errors, run_main, store_options

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def _age(ctx: click.Context, param: click.Parameter, value: str) -> float:
    m = _AGE.match(value)
    if not m:
        raise click.BadParameter(f"not an age: {value!r} (examples: 0, 90m, 24h, 7d)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@click.command()
@click.argument("dest")
@store_options
@click.option("--older-than", default="24h", show_default=True, callback=_age,
              help="Only uploads started this long ago: a migration running or resumed "
                   "works on uploads up to 12h old (older ones it starts anew).")
@click.option("--dry-run", is_flag=True, help="List them, abort nothing.")
@click.option("--ca-bundle", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="PEM file of a private CA to trust (certificates are always checked).")
@handle_errors
def cleanup(dest: str, endpoint_url: str | None, provider: str | None, region: str | None,
            profile: str | None, addressing_style: str | None, sse: str | None,
            sse_kms_key_id: str | None, sse_c_key_file: str | None,
            encryption_scope: str | None, older_than: float, dry_run: bool,
            ca_bundle: Path | None) -> None:
    """List and abort unfinished uploads that killed runs left under DEST (s3://bucket/prefix,
    /dir or file:///dir)."""
    where = destination(dest, endpoint_url=endpoint_url, provider=provider, region=region,
                        profile=profile, addressing_style=addressing_style, sse=sse,
                        sse_kms_key_id=sse_kms_key_id,
                        sse_c_key_file=sse_c_key_file,
                        encryption_scope=encryption_scope)

    async def go() -> list[PendingUpload] | None:
        backend = await open_backend(where, TransferConfig(ca_bundle=ca_bundle))
        try:
            if getattr(backend, "uploads_expire", False):
                # Nothing to abort, but a container that does not exist is said so.
                await anext(aiter(backend.list(where.key(""))), None)
                return None
            return await run_cleanup(backend, where, older_than=older_than, dry_run=dry_run)
        finally:
            await backend.close()

    if older_than < RESUME_MAX_AGE and not dry_run:
        click.echo(f"warning: uploads younger than {RESUME_MAX_AGE / 3600:g}h may be those of a "
                   "migration running now or about to resume (it then stops with an error "
                   "and a re-run sends them again)", err=True)
    found = run_main(go())
    if found is None:
        click.echo(f"nothing to clean under {where}: this store drops uploads never completed "
                   "by itself (Azure: uncommitted blocks after 7 days)")
        return
    for u in found:
        started = datetime.fromtimestamp(u.initiated, UTC).isoformat(timespec="seconds")
        click.echo(f"{'stale' if dry_run else 'aborted'}: {u.key} (started {started})")
    click.echo(f"{len(found):,} unfinished uploads {'found' if dry_run else 'aborted'}")
