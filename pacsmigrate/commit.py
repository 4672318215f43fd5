"""Commit stage: record an acknowledged object and its index rows in one transaction."""

from __future__ import annotations

from . import manifest
from .backends.base import Backend, PendingUploads
from .checkpoint import Checkpoint
from .records import now_iso
from .upload import Stored, recover


async def commit(cp: Checkpoint, stored: Stored) -> int:
    """Only called after the store acknowledged the object and its sidecar."""
    doc = stored.doc
    rows = manifest.rows(doc)
    obj = {"key": doc["key"], "kind": doc["kind"], "group": doc["group"],
           "size": stored.info.size, "etag": stored.info.etag, "members": len(rows),
           "bytes": sum(int(r["length"]) for r in rows), "created": doc.get("created", ""),
           "committed": now_iso()}
    await cp.call(cp.commit_object, obj, rows)
    return len(rows)


async def reconcile(cp: Checkpoint, backend: Backend) -> tuple[int, int]:
    """Settle the intents a killed run left: adopt stored objects, forget the rest.

    Runs before the scan, so a file changed since the crash is seen as changed afterwards.
    Returns (objects adopted, intents dropped).
    """
    adopted = dropped = 0
    for plan in await cp.call(cp.intents):
        stored = await recover(plan, backend)
        if stored is not None:
            await commit(cp, stored)
            adopted += 1
            continue
        if isinstance(backend, PendingUploads):
            await backend.abort_pending(plan.key)  # parts of an unfinished multipart upload
        await cp.call(cp.drop_intent, plan.key)
        dropped += 1
    return adopted, dropped
