"""fanout: n at a time, the producer held back, results in order, the first error as itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from conftest import run

from pacsmigrate.errors import ObjectNotFoundError
from pacsmigrate.fanout import cancelled, mapped, workers


def test_at_most_n_run_at_once_and_the_producer_waits_for_them() -> None:
    running, most, pulled, done = [0], [0], [0], []

    def items() -> Iterator[int]:
        for i in range(50):
            pulled[0] += 1
            # The producer runs at most the queue's n items ahead of the n working.
            assert pulled[0] - len(done) <= 2 * 3 + 1
            yield i

    async def work(i: int) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        await asyncio.sleep(0.001 * (i % 4))
        running[0] -= 1
        done.append(i)

    run(workers(items(), work, 3))
    assert most[0] == 3 and sorted(done) == list(range(50))


def test_async_items_and_results_in_order() -> None:
    async def items() -> AsyncIterator[int]:
        for i in range(20):
            await asyncio.sleep(0)
            yield i

    seen: list[int] = []

    async def note(i: int) -> None:
        seen.append(i)

    run(workers(items(), note, 4))
    assert sorted(seen) == list(range(20))

    async def square(i: int) -> int:
        await asyncio.sleep(0.001 * (5 - i % 5))  # later items finish first
        return i * i

    assert run(mapped(list(range(20)), square, 4)) == [i * i for i in range(20)]
    assert run(mapped([], square, 4)) == []


def test_the_first_failure_stops_the_rest_and_is_raised_as_itself() -> None:
    started: list[int] = []

    async def work(i: int) -> None:
        started.append(i)
        if i == 5:
            raise ObjectNotFoundError("gone")
        await asyncio.sleep(0.01)

    with pytest.raises(ObjectNotFoundError, match="gone"):
        run(workers(range(1000), work, 4))
    assert len(started) < 20  # not every item was started after the failure


def test_cancelled_stops_every_task_and_waits_for_it() -> None:
    async def main() -> None:
        stopped: list[str] = []

        async def slow(name: str) -> None:
            try:
                await asyncio.sleep(60)
            finally:
                await asyncio.sleep(0)  # still running after cancel() returns
                stopped.append(name)

        async def failed() -> None:
            raise ValueError("its own error, not the caller's")

        tasks = [asyncio.create_task(slow("a")), asyncio.create_task(slow("b")),
                 asyncio.create_task(failed())]
        await asyncio.sleep(0)
        await cancelled(None, *tasks)
        assert sorted(stopped) == ["a", "b"] and all(t.done() for t in tasks)
        await cancelled()  # nothing to stop

    asyncio.run(main())
