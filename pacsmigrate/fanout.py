"""Bounded fan-out: n workers over a stream of items, the producer held while all are busy.

The one helper every pass that works on many items at once uses (verify, replicate,
restore, DICOMweb metadata); the upload's parts keep their own (multipart.py: a part's
slot is held until its bytes are sent, and a failed part stops the producer). And the one
way to stop tasks: `cancelled` (cancel, then wait until they have stopped).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from .errors import first_error

T = TypeVar("T")
R = TypeVar("R")


async def workers(items: AsyncIterable[T] | Iterable[T], work: Callable[[T], Awaitable[None]],
                  n: int) -> None:
    """n workers over a bounded queue: the producer waits while all of them are busy. The
    first failure cancels the rest and is raised as itself (not a task group's wrapper)."""
    queue: asyncio.Queue[tuple[T] | None] = asyncio.Queue(n)

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            await work(item[0])

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(worker())
            if isinstance(items, AsyncIterable):
                async for item in items:
                    await queue.put((item,))
            else:
                for item in items:
                    await queue.put((item,))
            for _ in range(n):  # on failure the task group cancels the workers instead
                await queue.put(None)
    except BaseExceptionGroup as group:
        # Callers (and the CLI's error handling) see our error, not the task group's wrapper.
        raise first_error(group) from None


async def cancelled(*futures: asyncio.Future[Any] | None) -> None:
    """Cancel each (None: none there) and wait until all of them have stopped, whatever
    they end with: nothing of theirs still runs when this returns."""
    running = [f for f in futures if f is not None]
    for f in running:
        f.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)


async def mapped(items: Sequence[T], work: Callable[[T], Awaitable[R]], n: int) -> list[R]:
    """work(item) for every item, at most n at once; the results in the items' order."""
    out: list[R | None] = [None] * len(items)

    async def one(pair: tuple[int, T]) -> None:
        out[pair[0]] = await work(pair[1])

    await workers(enumerate(items), one, n)
    return out  # type: ignore[return-value]  # every slot filled: workers raised otherwise
