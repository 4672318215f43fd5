"""Bound one request attempt in time: a deadline, and a body nobody reads for `idle` s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from .body import Body

T = TypeVar("T")


class _Watch:
    """Expires `timeout` when the body has been waiting `idle` s for its next slice.

    Socket read timeouts do not cover sending: a store that stops reading our body (or never
    says 100 Continue) leaves the writer blocked. One timer, re-armed from the last progress,
    so a body that keeps moving costs nothing but that timer.
    """

    __slots__ = ("body", "fired", "handle", "idle", "timeout")

    def __init__(self, body: Body, idle: float, timeout: asyncio.Timeout) -> None:
        self.body, self.idle, self.timeout = body, idle, timeout
        self.fired = False
        self.handle = asyncio.get_running_loop().call_at(body.touched + idle, self._check)

    def _check(self) -> None:
        if self.body.sent:
            return  # waiting for the answer is the read timeout's job
        due = self.body.touched + self.idle
        now = time.monotonic()
        if now >= due:
            self.fired = True
            self.timeout.reschedule(now)  # expires at once: the attempt is cancelled
        else:
            self.handle = asyncio.get_running_loop().call_at(due, self._check)

    def stop(self) -> None:
        self.handle.cancel()


async def bounded(request: Awaitable[T], *, budget: float | None,
                  body: Body | None = None, idle: float = 0.0) -> T:
    """Await request within budget seconds; with a body, also fail once it sits unread idle s.

    Both raise TimeoutError (a transient fault: the attempt is retried). Runs in the caller's
    task, so an attempt costs no extra task.
    """
    watch: _Watch | None = None
    try:
        async with asyncio.timeout(budget) as timeout:
            if body is not None:
                watch = _Watch(body, idle, timeout)  # loop.time() is time.monotonic()
            try:
                return await request
            finally:
                if watch is not None:
                    watch.stop()
    except TimeoutError:
        if not timeout.expired():
            raise  # the request's own timeout (socket read, connect)
        if watch is not None and watch.fired:
            raise TimeoutError(f"request body unread for {idle:g} s") from None
        raise TimeoutError(f"no answer within {budget:g} s") from None
