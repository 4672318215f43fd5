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


async def reconcile(cp: Checkpoint, backend: Backend) -> tuple[int, list[str]]:
    """Settle the intents a killed run left: adopt stored objects, forget the rest.

    Runs before the scan, so a file changed since the crash is seen as changed afterwards.
    A forgotten intent's unfinished multipart upload is left in place: the same plan has
    the same key, so this run resumes its parts; `abandon` aborts it if that never happens.
    Returns (objects adopted, keys of dropped intents).
    """
    adopted = 0
    dropped: list[str] = []
    for plan in await cp.call(cp.intents):
        stored = await recover(plan, backend)
        if stored is not None:
            await commit(cp, stored)
            adopted += 1
            continue
        await cp.call(cp.drop_intent, plan.key)
        dropped.append(plan.key)
    return adopted, dropped


async def abandon(cp: Checkpoint, backend: Backend, keys: list[str]) -> int:
    """Abort unfinished uploads of dropped intents that this run did not complete."""
    if not isinstance(backend, PendingUploads):
        return 0
    aborted = 0
    for key in keys:
        if not await cp.call(cp.has_object, key):
            aborted += await backend.abort_pending(key)
    return aborted
