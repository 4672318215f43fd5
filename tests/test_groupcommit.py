"""Group commit (commit.GroupWriter): items share transactions, a commit lingers for
company only while more may come, and every caller returns once its item is durable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.commit import GroupWriter
from pacsmigrate.records import DICOM, Described, Entry, StoredObject

LINGER = 5.0  # far longer than any test takes when it is not waited out


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Checkpoint]:
    c = Checkpoint(tmp_path / "state")
    yield c
    c.close()


def obj(n: int, files: int = 1) -> StoredObject:
    about = Described("g", DICOM, "", "1.2", "1.2.3", "", "MR", "20200101", "1.2.840.10008.1.2.1")
    entries = tuple(Entry(f"/s/{n}/{i}".encode(), 512 * i, 10, f"{n:032x}{i:032x}", 10, 1,
                          about) for i in range(files))
    return StoredObject(f"k/{n}.tar", "tar", "g", f"b{n}", 1024, "etag", "", entries)


def committed(cp: Checkpoint, *objects: StoredObject) -> bool:
    return all(cp.index_row(e.path) is not None for o in objects for e in o.entries)


def test_a_lone_commit_waits_for_company_while_others_are_in_flight(cp: Checkpoint) -> None:
    """Two objects acknowledged 50 ms apart, with uploads still in flight: one transaction,
    and each put returns only once its rows are in the checkpoint."""
    async def go() -> float:
        w: GroupWriter[StoredObject] = GroupWriter(cp, cp.commit_objects, linger=0.5,
                                                   idle=lambda: False)
        t = time.monotonic()
        first = asyncio.create_task(w.put(obj(1)))
        await asyncio.sleep(0.05)
        assert not first.done()
        await asyncio.gather(first, w.put(obj(2)))
        assert w.transactions == 1
        assert committed(cp, obj(1), obj(2))
        return time.monotonic() - t
    assert asyncio.run(go()) >= 0.45  # the linger, waited out: nothing said "enough"


def test_no_linger_when_nothing_else_is_in_flight(cp: Checkpoint) -> None:
    """idle(): at the end of a run (no other object in flight) a commit goes at once."""
    async def go() -> float:
        w: GroupWriter[StoredObject] = GroupWriter(cp, cp.commit_objects, linger=LINGER)
        t = time.monotonic()
        await w.put(obj(1))
        await w.put(obj(2))
        assert w.transactions == 2
        return time.monotonic() - t
    assert asyncio.run(go()) < LINGER / 2


def test_enough_files_commit_without_waiting_out_the_linger(cp: Checkpoint) -> None:
    """Once `enough` files (by weight) wait, the transaction goes."""
    async def go() -> float:
        w: GroupWriter[StoredObject] = GroupWriter(
            cp, cp.commit_objects, linger=LINGER, enough=100,
            weight=lambda o: len(o.entries), idle=lambda: False)
        t = time.monotonic()
        first = asyncio.create_task(w.put(obj(1, files=60)))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, w.put(obj(2, files=60)))
        assert w.transactions == 1
        assert committed(cp, obj(1, files=60), obj(2, files=60))
        return time.monotonic() - t
    assert asyncio.run(go()) < LINGER / 2


def test_a_poke_ends_the_linger_when_the_flight_empties(cp: Checkpoint) -> None:
    """The last upload in flight fails or ends without a commit: the sink pokes, the
    lingering commit sees idle() and goes, rather than waiting the linger out."""
    async def go() -> float:
        flying = [True]
        w: GroupWriter[StoredObject] = GroupWriter(cp, cp.commit_objects, linger=LINGER,
                                                   idle=lambda: not flying[0])
        t = time.monotonic()
        first = asyncio.create_task(w.put(obj(1)))
        await asyncio.sleep(0.05)
        assert not first.done()
        flying[0] = False
        w.poke()
        await first
        assert committed(cp, obj(1))
        return time.monotonic() - t
    assert asyncio.run(go()) < LINGER / 2


def test_a_failed_transaction_fails_every_item_it_held(cp: Checkpoint) -> None:
    def broken(items: list[StoredObject]) -> None:
        raise OSError("disk full")

    async def go() -> list[BaseException | None]:
        w: GroupWriter[StoredObject] = GroupWriter(cp, broken, linger=0.3,
                                                   idle=lambda: False)
        got = await asyncio.gather(w.put(obj(1)), w.put(obj(2)), return_exceptions=True)
        return [g if isinstance(g, BaseException) else None for g in got]
    assert all(isinstance(e, OSError) for e in asyncio.run(go()))


def test_items_handed_in_during_a_failing_transaction_fail_too(cp: Checkpoint) -> None:
    """A commit that fails (a full disk) fails the items that arrived while it ran too:
    none is left waiting for a transaction no one will write."""
    def slow_broken(items: list[StoredObject]) -> None:
        time.sleep(0.2)
        raise OSError("disk full")

    async def go() -> list[bool]:
        w: GroupWriter[StoredObject] = GroupWriter(cp, slow_broken)
        first = asyncio.create_task(w.put(obj(1)))
        await asyncio.sleep(0.05)  # the first transaction is running
        got = await asyncio.wait_for(
            asyncio.gather(first, w.put(obj(2)), return_exceptions=True), LINGER)
        return [isinstance(g, OSError) for g in got]
    assert asyncio.run(go()) == [True, True]


def test_pending_counts_files_until_they_are_durable_or_failed(cp: Checkpoint) -> None:
    """`pending` (by weight: files) is what the sink bounds the commit backlog with: it
    holds an item from its hand-in until its transaction is durable, or failed."""
    def slow(items: list[StoredObject]) -> None:
        time.sleep(0.1)
        if any(o.key == "k/3.tar" for o in items):
            raise OSError("disk full")
        cp.commit_objects(items)

    async def go() -> list[int]:
        w: GroupWriter[StoredObject] = GroupWriter(cp, slow, weight=lambda o: len(o.entries))
        seen = [w.pending]
        first = asyncio.create_task(w.put(obj(1, files=5)))
        second = asyncio.create_task(w.put(obj(2, files=7)))
        await asyncio.sleep(0.02)
        seen.append(w.pending)  # both handed in: one being written, one waiting
        await asyncio.gather(first, second)
        seen.append(w.pending)
        with pytest.raises(OSError):
            await w.put(obj(3, files=4))
        seen.append(w.pending)
        return seen
    assert asyncio.run(go()) == [0, 12, 0, 0]


def test_a_flusher_cancelled_while_lingering_leaves_no_one_waiting(cp: Checkpoint) -> None:
    """The task that drives the lingering transaction is cancelled (the run stops): the
    items that waited with it are cancelled too, none waits for a flush that never comes."""
    async def go() -> list[bool]:
        w: GroupWriter[StoredObject] = GroupWriter(cp, cp.commit_objects, linger=LINGER,
                                                   idle=lambda: False)
        first = asyncio.create_task(w.put(obj(1)))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(w.put(obj(2)))
        await asyncio.sleep(0.05)
        first.cancel()
        got = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True),
                                     LINGER / 2)
        return [isinstance(g, asyncio.CancelledError) for g in got]
    assert asyncio.run(go()) == [True, True]


def test_a_backlog_is_written_enough_at_a_time_in_order(cp: Checkpoint) -> None:
    """Items handed in while a slow transaction runs are written `enough` (by weight) at a
    time, oldest first; a callable `enough` is asked again before each transaction (the
    checkpoint lowers it as its tables grow)."""
    written: list[list[str]] = []

    def slow(items: list[StoredObject]) -> None:
        time.sleep(0.1)
        written.append([o.key for o in items])
        cp.commit_objects(items)

    limits = iter([1 << 62, 10, 3])

    async def go() -> None:
        w: GroupWriter[StoredObject] = GroupWriter(cp, slow, enough=lambda: next(limits),
                                                   weight=lambda o: len(o.entries))
        first = asyncio.create_task(w.put(obj(1, files=2)))
        await asyncio.sleep(0.02)  # the first transaction runs; four wait behind it
        rest = [asyncio.create_task(w.put(obj(n, files=4))) for n in range(2, 6)]
        await asyncio.gather(first, *rest)
        assert w.pending == 0
    asyncio.run(go())
    # 4 + 4 < 10 <= 4 + 4 + 4: the item that reaches `enough` goes with those before it.
    assert written == [["k/1.tar"], ["k/2.tar", "k/3.tar", "k/4.tar"], ["k/5.tar"]]
    assert committed(cp, *(obj(n, files=4) for n in range(2, 6)))
