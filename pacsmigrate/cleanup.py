"""Find and abort unfinished multipart uploads under a destination's prefix."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from .backends.base import Backend, PendingUpload, PendingUploads
from .config import Destination


async def stale_uploads(backend: Backend, dest: Destination, *, older_than: float,
                        now: float | None = None) -> AsyncIterator[PendingUpload]:
    """Unfinished uploads under dest's prefix started more than older_than seconds ago.

    A running migration's own uploads are young; the default age in the CLI keeps them.
    """
    if not isinstance(backend, PendingUploads):
        return
    cutoff = (time.time() if now is None else now) - older_than
    prefix = dest.key("")
    async for upload in backend.pending_uploads(f"{prefix}/" if prefix else ""):
        if upload.initiated <= cutoff:
            yield upload


async def cleanup(backend: Backend, dest: Destination, *, older_than: float,
                  dry_run: bool = False) -> list[PendingUpload]:
    """Abort (or with dry_run only list) the stale uploads; returns them."""
    found = [u async for u in stale_uploads(backend, dest, older_than=older_than)]
    if not dry_run and isinstance(backend, PendingUploads):
        for upload in found:
            await backend.abort_upload(upload)
    return found
