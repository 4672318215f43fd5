"""`policy`: what a migration's storage policy asks of the store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..access import destination_of
from ..checkpoint import Checkpoint
from ..lifecycle import lifecycle
from .common import handle_errors, state_option


@click.group()
def policy() -> None:
    """Storage policy: the store-side rules a migration needs."""


@policy.command("lifecycle")
@state_option()
@handle_errors
def lifecycle_cmd(state_dir: Path) -> None:
    """Print the lifecycle rules (S3 lifecycle configuration, or Azure management policy
    JSON) that move the migration's objects to the next class of its --tier-policy as
    their studies age. Apply them with `aws s3api put-bucket-lifecycle-configuration` or
    `az storage account management-policy create`."""
    cp = Checkpoint(state_dir, readonly=True)
    try:
        rules = lifecycle(cp, destination_of(cp))
    finally:
        cp.close()
    click.echo(json.dumps(rules, indent=2))
