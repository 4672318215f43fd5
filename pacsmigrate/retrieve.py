"""Fetch one migrated file back by its original path: one range GET, blake3 checked."""

from __future__ import annotations

import blake3

from .backends.base import Backend
from .checkpoint import Checkpoint
from .errors import IntegrityError, PacsMigrateError


async def fetch(cp: Checkpoint, backend: Backend, path: bytes) -> bytes:
    """The file's bytes as migrated, verified against the index row before returning."""
    row = cp.index_row(path)
    if row is None:
        raise PacsMigrateError(f"not in the index: {path.decode('utf-8', 'backslashreplace')}")
    data = await backend.load(row["key"], offset=int(row["offset"]), length=int(row["length"]))
    if blake3.blake3(data).hexdigest() != row["blake3"]:
        raise IntegrityError(f"blake3 mismatch reading {row['key']} at {row['offset']}")
    return data
