"""Cancel a request whose body stopped moving: socket read timeouts do not cover sending."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class TimedBody(io.BytesIO):
    """A request body that remembers when it was last read (or rewound for signing).

    aiohttp reads it as the socket drains; a store that stops reading, or never answers
    `Expect: 100-continue`, stops the reads, and the watchdog sees the silence.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.size = len(data)
        self.touched = time.monotonic()

    def read(self, size: int | None = -1, /) -> bytes:
        self.touched = time.monotonic()
        return super().read(size)

    def seek(self, pos: int, whence: int = 0, /) -> int:
        self.touched = time.monotonic()
        return super().seek(pos, whence)

    @property
    def sent(self) -> bool:
        return self.tell() >= self.size


async def guarded(request: Callable[[TimedBody], Awaitable[T]], data: bytes, *,
                  idle: float, tick: float = 0.5) -> T:
    """Run request with a fresh body; raise TimeoutError if the body sits unread for `idle`.

    Once the body is sent, waiting for the answer is the client's read timeout's job.
    """
    body = TimedBody(data)
    task = asyncio.ensure_future(request(body))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=min(tick, idle))
            if done:
                return task.result()
            if not body.sent and time.monotonic() - body.touched > idle:
                raise TimeoutError(f"request body unread for {idle:g} s")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
