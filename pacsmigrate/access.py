"""Open a finished (or running) migration for reading: its state plus its store."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from .backends import Backend, opened
from .checkpoint import Checkpoint
from .config import AzureOptions, Destination, S3Options, TransferConfig
from .errors import ConfigError, StateError


@dataclass(frozen=True)
class Opened:
    """A state directory's checkpoint (read-only), its destination and a backend to it."""

    cp: Checkpoint
    dest: Destination
    backend: Backend


def destination_of(cp: Checkpoint, *, endpoint_url: str | None = None) -> Destination:
    """Where the state's migration writes; endpoint_url overrides the recorded one."""
    config = cp.get_meta("config")
    if not config:
        raise StateError(f"{cp.state_dir} holds no migration (run `pacsmigrate migrate` first)")
    dest = Destination.parse(config["dest"],
                             endpoint_url=endpoint_url or config.get("endpoint_url"))
    if dest.scheme == "az":
        return dest.with_azure(AzureOptions.from_meta(config))
    return dest.with_s3(S3Options.from_meta(config)) if dest.scheme == "s3" else dest


def with_customer_key(dest: Destination, key_file: str | None) -> Destination:
    """The migration's destination read with the customer key (SSE-C, Azure's) in key_file."""
    if dest.s3 is not None and key_file:
        return replace(dest, s3=replace(dest.s3, sse_c_key_file=key_file))
    if dest.azure is not None and key_file:
        return replace(dest, azure=replace(dest.azure, cpk_key_file=key_file))
    return dest


def remembered_ca(cp: Checkpoint, dest: Destination) -> Path | None:
    """The private CA the migration in cp was told to trust (see _remembered_ca), if any."""
    ca = cp.get_meta("ca_bundle")
    return _remembered_ca(Path(ca), dest) if ca else None


def _remembered_ca(ca: Path, dest: Destination) -> Path | None:
    """The CA file the migration was given; when it is gone, the environment's (None), else
    a line that says so (these commands take no --ca-bundle)."""
    variable = "REQUESTS_CA_BUNDLE" if dest.scheme == "az" else "AWS_CA_BUNDLE"
    if ca.is_file():
        return ca
    if os.environ.get(variable):
        return None
    raise ConfigError(f"the private CA this migration was given, {ca}, is gone: put it back, "
                      f"or name the CA file in {variable}")


@asynccontextmanager
async def open_migration(state_dir: Path, *, endpoint_url: str | None = None,
                         transfer: TransferConfig | None = None,
                         sse_c_key_file: str | None = None) -> AsyncIterator[Opened]:
    """Read access for verify, get, restore, locate; does not take the run lock.
    `sse_c_key_file`: the key of a migration encrypted with SSE-C (else the environment's)."""
    cp = Checkpoint(state_dir, readonly=True)
    try:
        dest = with_customer_key(destination_of(cp, endpoint_url=endpoint_url), sse_c_key_file)
        transfer = transfer or TransferConfig()
        ca = cp.get_meta("ca_bundle")  # the private CA the migration was told to trust
        if ca and transfer.ca_bundle is None:
            transfer = replace(transfer, ca_bundle=_remembered_ca(Path(ca), dest))
        async with opened(dest, transfer) as backend:
            yield Opened(cp, dest, backend)
    finally:
        cp.close()
