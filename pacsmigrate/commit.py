"""Commit stage: record an acknowledged object and its index rows in one transaction."""

from __future__ import annotations

import asyncio
from typing import Any

from . import manifest
from .backends.base import Backend, PendingUploads
from .checkpoint import Checkpoint
from .records import now_iso
from .upload import Stored, recover

Item = tuple[dict[str, Any], list[dict[str, Any]]]


def _record(stored: Stored) -> Item:
    doc = stored.doc
    rows = manifest.rows(doc)
    obj = {"key": doc["key"], "kind": doc["kind"], "group": doc["group"],
           "size": stored.info.size, "etag": stored.info.etag, "members": len(rows),
           "bytes": sum(int(r["length"]) for r in rows), "created": doc.get("created", ""),
           "committed": now_iso()}
    return obj, rows


async def commit(cp: Checkpoint, stored: Stored) -> int:
    """Only called after the store acknowledged the object and its sidecar."""
    item = _record(stored)
    await cp.call(cp.commit_objects, [item])
    return len(item[1])


class Committer:
    """Group commit: objects acknowledged while one commit runs share the next transaction.

    Each caller still returns only once its own object is durable in the checkpoint; under
    load many objects share one fsync, idle there is no added wait (restic's batched index).
    """

    def __init__(self, cp: Checkpoint) -> None:
        self.cp = cp
        self._waiting: list[tuple[Item, asyncio.Future[None]]] = []
        self._flushing = False
        self.transactions = 0

    async def commit(self, stored: Stored) -> int:
        item = _record(stored)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if not self._flushing:
            self._flushing = True
            try:
                await self._flush()
            finally:
                self._flushing = False
        await done
        return len(item[1])

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self.cp.call(self.cp.commit_objects, [item for item, _ in batch])
                self.transactions += 1
            except BaseException as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                raise
            for _, done in batch:
                done.set_result(None)


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
