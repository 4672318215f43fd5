"""Spilled files are written behind the walk: batched, in order, all of them by `settle`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.errors import StateError
from pacsmigrate.records import DICOM, Described, Member
from pacsmigrate.stream import SpillBehind

GROUPS = ["0" * 32, "7f" * 16, "ff" * 16]


def member(path: bytes, group: str = GROUPS[0]) -> Member:
    return Member(path, 100, 1000, Described(group, DICOM, "", "1.2.3", "1.2.3.4",
                                             "1.2.3.4." + path.decode()[-2:], "CT",
                                             "20240101", "1.2.840.10008.1.2.1"))


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Checkpoint]:
    c = Checkpoint(tmp_path / "state")
    yield c
    c.close()


def gated(cp: Checkpoint) -> tuple[threading.Event, list[int]]:
    """Make the checkpoint's spill writes wait for the returned event; the list gets the
    size of each write as it starts."""
    gate = threading.Event()
    calls: list[int] = []
    real = cp.spill

    def slow_spill(members: list[Member]) -> None:
        calls.append(len(members))
        gate.wait(10)
        real(members)
    cp.spill = slow_spill  # type: ignore[method-assign]
    return gate, calls


def test_batches_are_written_behind_and_settle_writes_the_rest(cp: Checkpoint) -> None:
    gate, calls = gated(cp)

    async def go() -> None:
        spills = SpillBehind(cp, batch=5)
        files = [member(b"/s/%02d" % i, group=GROUPS[i % 3]) for i in range(12)]
        await spills.add(files[:3])
        assert calls == []  # under a batch: held
        await spills.add(files[3:6])
        # A full batch is handed to the checkpoint's thread; add() did not wait for it.
        assert spills.writing is not None and not spills.writing.done()
        assert cp.counts()["spill"] == 0
        gate.set()
        await spills.add(files[6:12])  # waits for the batch before it: one at a time
        await spills.settle()
        assert calls == [6, 6]
        assert cp.counts()["spill"] == 12
        assert cp.spilled_groups(GROUPS) == set(GROUPS)
        await spills.settle()  # nothing left: no empty transaction
        assert calls == [6, 6]
    asyncio.run(go())


def test_a_failed_write_stops_the_run_at_the_next_step(cp: Checkpoint) -> None:
    def full(members: list[Member]) -> None:
        raise StateError("no space left for the checkpoint")
    cp.spill = full  # type: ignore[method-assign]

    async def go() -> None:
        spills = SpillBehind(cp, batch=2)
        await spills.add([member(b"/s/a"), member(b"/s/b")])
        with pytest.raises(StateError, match="no space left"):
            await spills.settle()
    asyncio.run(go())


def test_cancel_drops_the_write_in_flight(cp: Checkpoint) -> None:
    gate, _ = gated(cp)

    async def go() -> None:
        spills = SpillBehind(cp, batch=1)
        await spills.add([member(b"/s/a")])
        writing = spills.writing
        await asyncio.sleep(0)
        gate.set()
        await spills.cancel()
        assert spills.writing is None and writing is not None and writing.done()
    asyncio.run(go())
