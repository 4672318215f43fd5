"""Commit stage: record acknowledged objects and their index rows, many per transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from .backends.base import Backend, PendingUploads
from .checkpoint import Checkpoint
from .upload import recover

T = TypeVar("T")


class GroupWriter(Generic[T]):
    """Group commit: items handed in while one transaction runs share the next one.

    Each caller still returns only once its own item is durable in the checkpoint; under
    load many items share one fsync, idle there is no added wait (restic's batched index).
    Used for the write-ahead intents and for the commits of acknowledged objects.
    """

    def __init__(self, cp: Checkpoint, write: Callable[[list[T]], None]) -> None:
        self.cp = cp
        self.write = write
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._flushing = False
        self.transactions = 0

    async def put(self, item: T) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if not self._flushing:
            self._flushing = True
            try:
                await self._flush()
            finally:
                self._flushing = False
        await done

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self.cp.call(self.write, [item for item, _ in batch])
                self.transactions += 1
            except BaseException as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                        done.exception()  # retrieved here: the flusher re-raises it
                raise
            for _, done in batch:
                done.set_result(None)


async def reconcile(cp: Checkpoint, backend: Backend) -> tuple[int, int, list[str]]:
    """Settle the intents a killed run left: adopt stored objects, forget the rest.

    Runs before the walk, so a file changed since the crash is seen as changed afterwards.
    A forgotten intent's unfinished multipart upload is left in place: the same plan has
    the same key, so this run resumes its parts; `abandon` aborts it if that never happens.
    Returns (objects adopted, their files, keys of dropped intents).
    """
    adopted = files = 0
    dropped: list[str] = []
    for plan in await cp.call(cp.intents):
        stored = await recover(plan, backend)
        if stored is not None:
            await cp.call(cp.commit_objects, [stored])
            adopted += 1
            files += len(stored.entries)
            continue
        await cp.call(cp.drop_intent, plan.key)
        dropped.append(plan.key)
    return adopted, files, dropped


async def abandon(cp: Checkpoint, backend: Backend, keys: list[str]) -> int:
    """Abort unfinished uploads of dropped intents that this run did not complete."""
    if not isinstance(backend, PendingUploads):
        return 0
    aborted = 0
    for key in keys:
        if not await cp.call(cp.has_object, key):
            aborted += await backend.abort_pending(key)
    return aborted
