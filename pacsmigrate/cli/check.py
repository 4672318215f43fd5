"""`check`: the pre-flight of a migration, alone: every finding, one line each."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..preflight import OK, run_checks
from .common import (
    destination,
    handle_errors,
    run_main,
    state_option,
    store_options,
    transfer_config,
    transfer_options,
)


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="SOURCE... DEST")
@state_option(must_exist=False)
@store_options
@transfer_options
@click.option("--read-only", is_flag=True,
              help="Only list the store (as a dry run does); write no probe object.")
@click.option("--storage-class", "classes", multiple=True, metavar="CLASS",
              help="Also check that the store takes objects in this class (repeatable; "
                   "`migrate` checks the classes of its --storage-class / --tier-policy).")
@click.option("--object-lock", is_flag=True,
              help="Also check that the bucket takes retention locks (for --retain-years, "
                   "--retention-map, --legal-hold).")
@handle_errors
def check(paths: tuple[str, ...], state_dir: Path, endpoint_url: str | None,
          provider: str | None, region: str | None, profile: str | None,
          addressing_style: str | None, sse: str | None, sse_kms_key_id: str | None,
          sse_c_key_file: str | None, encryption_scope: str | None, read_only: bool,
          classes: tuple[str, ...], object_lock: bool, **transfer: Any) -> None:
    """Check that `migrate SOURCE... DEST` can run, writing nothing but a probe object
    (deleted at once): the sources are readable; --state can be made outside them, with
    room; the store takes the credentials, has the bucket, stores, returns and deletes an
    object; its clock agrees with this machine's. `migrate` runs the same checks first.

    Exit status: 0 when every check passed (warnings allowed), 2 when one failed.
    """
    if len(paths) < 2:
        raise click.UsageError("give at least one SOURCE and a DEST")
    dest = destination(paths[-1], endpoint_url=endpoint_url, provider=provider, region=region,
                       profile=profile, addressing_style=addressing_style, sse=sse,
                       sse_kms_key_id=sse_kms_key_id, sse_c_key_file=sse_c_key_file,
                       encryption_scope=encryption_scope)
    report = run_main(run_checks(tuple(Path(p) for p in paths[:-1]), state_dir, dest,
                                    # as migrate's default: says which checksum it sends
                                    transfer_config(**transfer, checksum="auto"),
                                    write=not read_only,
                                    retention=object_lock, report_all=True, classes=classes))
    for c in report.checks:
        click.echo(str(c))
    if report.failed:
        click.echo(f"{len(report.failed)} check(s) failed: fix them, then run the check "
                   "again", err=True)
        sys.exit(2)
    click.echo("all checks passed" + (" (with warnings)" if any(
        c.verdict != OK for c in report.checks) else ""))


__all__ = ["check"]
