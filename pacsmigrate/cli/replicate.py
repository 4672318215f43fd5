"""`replicate`: copy a migration to a second store for disaster recovery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..config import Destination
from ..replicate import replicate
from .common import (
    destination,
    handle_errors,
    run_main,
    state_option,
    store_options,
    transfer_config,
    transfer_options,
)


@click.command("replicate")
@click.argument("dest")
@state_option()
@click.option("--to-state", "replica_state", required=True,
              type=click.Path(path_type=Path, file_okay=False),
              help="State directory for the replica (its own index); re-use it to resume.")
@click.option("--storage-class", default=None, metavar="CLASS",
              help="Store every copy in this class of DEST (e.g. DEEP_ARCHIVE, Archive; "
                   "'default': the store's own, for one without classes such as Wasabi); "
                   "without it: each object's class in the migration's store.")
@store_options
@transfer_options
@handle_errors
def replicate_cmd(dest: str, state_dir: Path, replica_state: Path, storage_class: str | None,
                  endpoint_url: str | None,
                  provider: str | None, region: str | None, profile: str | None,
                  addressing_style: str | None, sse: str | None,
                  sse_kms_key_id: str | None, sse_c_key_file: str | None,
            encryption_scope: str | None, **transfer: Any) -> None:
    """Copy the migration in --state to a second store DEST (same keys) for disaster
    recovery; the replica gets its own state (--to-state) for verify, get and restore.

    Every object is checked against the source's MD5 where the stores' ETags allow; run
    `pacsmigrate verify --state REPLICA --deep` to read every instance back from DEST.
    """
    # The key reads the migration's objects, and encrypts the copies where the replica's
    # store takes one (a directory does not: its copies are the plain bytes).
    local = Destination.parse(dest).scheme == "file"
    where = destination(dest, endpoint_url=endpoint_url, provider=provider, region=region,
                        profile=profile, addressing_style=addressing_style, sse=sse,
                        sse_kms_key_id=sse_kms_key_id,
                        sse_c_key_file=None if local else sse_c_key_file,
                        encryption_scope=encryption_scope)
    done = run_main(replicate(state_dir, where, replica_state,
                              transfer=transfer_config(**transfer), storage_class=storage_class,
                              source_key_file=sse_c_key_file))
    click.echo(f"replicated to {where}: {done.objects:,} objects; {done.copied:,} copied "
               f"({done.bytes_copied / 1e6:,.1f} MB), {done.present:,} already there; "
               f"{done.beside:,} manifests and records beside them")
    if done.repaired:
        click.echo(f"repaired: {done.repaired:,} objects a verify of the replica found "
                   "damaged were copied anew (run verify --deep on it once more)")
    if done.unchecked:
        click.echo(f"{done.unchecked:,} objects were written in other parts than the source's "
                   "and could not be compared by ETag: run `pacsmigrate verify --state "
                   f"{replica_state} --deep`")
    click.echo(f"OK: the replica's state is {replica_state}")
