"""One attempt's bounds: a deadline, and a body left unread for `idle` s; bodies from any buffer."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
from conftest import run

from pacsmigrate.backends.body import Body, md5
from pacsmigrate.backends.watchdog import bounded


async def reader(body: Body, *, every: float, stop_after: int | None = None) -> str:
    """A transport taking one slice every `every` s (and none after `stop_after`)."""
    for i, _ in enumerate(body.pieces(size=10)):
        if stop_after is not None and i >= stop_after:
            await asyncio.sleep(3600)  # the store stopped reading
        await asyncio.sleep(every)
    return "answered"


def test_a_body_nobody_reads_fails_after_idle() -> None:
    body = Body(b"x" * 100)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="unread for 0.3 s"):
        run(bounded(reader(body, every=0.01, stop_after=3), budget=30, body=body, idle=0.3))
    assert 0.3 <= time.monotonic() - started < 2


def test_a_slow_body_that_keeps_moving_is_not_cut() -> None:
    body = Body(bytearray(100))  # 10 slices, 0.1 s apart: 1 s in all, never 0.3 s quiet
    assert run(bounded(reader(body, every=0.1), budget=30, body=body, idle=0.3)) == "answered"
    assert body.sent


def test_waiting_for_the_answer_is_not_the_watchdogs_job() -> None:
    async def sent_then_slow_answer(body: Body) -> str:
        for _ in body.pieces():
            pass
        await asyncio.sleep(0.5)
        return "late"

    body = Body(memoryview(b"abc"))
    assert run(bounded(sent_then_slow_answer(body), budget=30, body=body, idle=0.1)) == "late"


def test_the_deadline_covers_requests_without_a_body() -> None:
    with pytest.raises(TimeoutError, match="no answer within 0.2 s"):
        run(bounded(asyncio.sleep(3600), budget=0.2))


def test_the_requests_own_timeout_passes_unchanged() -> None:
    class ReadTimeout(TimeoutError):
        pass

    async def times_out() -> None:
        raise ReadTimeout("socket read")

    with pytest.raises(ReadTimeout, match="socket read"):
        run(bounded(times_out(), budget=10))


@pytest.mark.parametrize("size", [0, 1000, 300 * 1024])  # inline and in a thread
def test_bodies_are_views_of_the_callers_buffer(size: int) -> None:
    data = bytearray(range(256)) * (size // 256) + bytearray(size % 256)
    body = Body(data)
    assert body.view.obj is data and body.size == size  # not a copy
    assert b"".join(body.pieces()) == data and body.sent
    assert b"".join(body.pieces()) == data  # a transport may send it again
    assert run(md5(memoryview(data))).digest() == hashlib.md5(data).digest()
    if size and size % 4 == 0:  # a view of 4-byte items is still its bytes
        wide = memoryview(data).cast("I")
        assert Body(wide).size == size
        assert run(md5(wide)).hexdigest() == hashlib.md5(data).hexdigest()
    with pytest.raises(TypeError):
        Body(memoryview(bytes(8))[::2])  # not contiguous: refused rather than copied
