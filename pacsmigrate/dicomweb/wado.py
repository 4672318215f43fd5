"""WADO-RS and WADO-URI reads: instances out of their bundles, verified, in bounded memory.

Instances are read in store order; members lying side by side in one object are fetched
by one range GET (a run of at most RUN_BYTES), a few runs ahead of the client. Every
instance's blake3 is checked before its last byte leaves: a mismatch (or an object gone
from the store) aborts the answer, so a client never takes a damaged instance for whole.
All requests share one budget of bytes held in memory, whatever the number of clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import blake3

from ..backends.base import Backend
from ..backends.body import Buffer
from ..config import MiB
from ..encoding import decode
from ..errors import IntegrityError
from ..fanout import cancelled
from ..retrieve import read_row, stream_row
from .catalog import Instance

# One range GET reads at most RUN_BYTES (a larger member: in chunks of it), AHEAD runs ahead
# of the client: 16 MiB and 4 streamed a study from SeaweedFS at ~0.9x one object's rate,
# 8 MiB and 3 at ~0.8x (benchmarks, section serve).
RUN_BYTES = 16 * MiB
GAP = 64 * 1024  # members this close in an object are read together (tar headers between)
AHEAD = 4  # runs read ahead of the client, per answer
BUDGET = 128 * MiB  # run bytes held by all answers together (two studies at full pace)
HEADER_BYTES = 64 * 1024  # the first read of an instance's header for /metadata


class Budget:
    """Bytes held at once by all answers (a counting semaphore in bytes).

    No deadlock: an answer waits (`take`) only while it holds nothing; what it reads ahead
    it takes only if free now and nobody waits (`try_take`), else it reads ahead later.
    """

    def __init__(self, total: int = BUDGET) -> None:
        self.total = self.free = total
        self._cond = asyncio.Condition()
        self._waiting = 0

    async def take(self, n: int) -> int:
        n = min(n, self.total)  # one run larger than the budget waits for all of it
        async with self._cond:
            self._waiting += 1
            try:
                await self._cond.wait_for(lambda: self.free >= n)
            finally:
                self._waiting -= 1
            self.free -= n
        return n

    def try_take(self, n: int) -> int | None:
        """n bytes if free now and no answer waits for some (read-ahead gives way)."""
        n = min(n, self.total)
        if self._waiting or self.free < n:
            return None
        self.free -= n
        return n

    async def give(self, n: int) -> None:
        async with self._cond:
            self.free += n
            self._cond.notify_all()


@dataclass
class Run:
    """Instances read by one range GET (or one large instance, read in chunks)."""

    key: str
    start: int
    end: int
    members: list[Instance]


def runs(instances: list[Instance]) -> list[Run]:
    """Group instances (in store order) into range reads of neighbours."""
    out: list[Run] = []
    for inst in sorted(instances, key=lambda i: (i.key, i.offset)):
        end = inst.offset + inst.length
        last = out[-1] if out else None
        if (last is not None and last.key == inst.key and not inst.encoding
                and not last.members[-1].encoding and 0 <= inst.offset - last.end <= GAP
                and end - last.start <= RUN_BYTES):
            last.end = end
            last.members.append(inst)
        else:
            out.append(Run(inst.key, inst.offset, end, [inst]))
    return out


def _checked(run: Run, data: bytes) -> list[tuple[Instance, Buffer]]:
    """The run's members cut from its bytes (views, not copies), each checked."""
    out: list[tuple[Instance, Buffer]] = []
    whole = memoryview(data)
    for inst in run.members:
        at = inst.offset - run.start
        member: Buffer = decode(bytes(whole[at:at + inst.length]), inst.encoding,
                                size=inst.size) if inst.encoding else whole[at:at + inst.length]
        if blake3.blake3(member).hexdigest() != inst.blake3:
            raise IntegrityError(f"instance bytes do not match their blake3 (object "
                                 f"{inst.key} at offset {inst.offset})")
        out.append((inst, member))
    return out


async def _read_run(backend: Backend, run: Run) -> list[tuple[Instance, Buffer]]:
    data = await backend.load(run.key, offset=run.start, length=run.end - run.start) \
        if run.end > run.start else b""
    return await asyncio.to_thread(_checked, run, data)


async def _large(backend: Backend, budget: Budget, inst: Instance
                 ) -> AsyncGenerator[Buffer, None]:
    """One member larger than a run, in chunks of a run (stream_row: the blake3 is checked
    before the last), two of them held at a time within the budget."""
    taken = await budget.take(2 * RUN_BYTES)
    try:
        async for data in stream_row(backend, inst.row(), chunk=RUN_BYTES):
            yield data
    finally:
        await budget.give(taken)


async def instances(backend: Backend, budget: Budget, found: list[Instance]
                    ) -> AsyncGenerator[tuple[Instance, AsyncGenerator[Buffer, None]], None]:
    """Each instance with its verified bytes (an iterator of chunks), in store order."""
    pending: list[tuple[Run, int, asyncio.Task[list[tuple[Instance, Buffer]]] | None]] = []
    todo = runs(found)

    async def start(run: Run) -> bool:
        """Read `run` (or mark it to stream); False: no budget to read ahead now."""
        # One member larger than a run is streamed (a compressed one is decoded whole).
        if run.end - run.start > RUN_BYTES and not run.members[0].encoding:
            pending.append((run, 0, None))  # streamed when its turn comes
            return True
        if pending:  # holding runs: never wait for more (answers would wait on each other)
            held = budget.try_take(run.end - run.start)
            if held is None:
                return False
        else:
            held = await budget.take(run.end - run.start)
        pending.append((run, held, asyncio.ensure_future(_read_run(backend, run))))
        return True

    try:
        nxt = 0
        while nxt < len(todo) or pending:
            # Nothing is read past a member to stream: its turn waits for budget, holding none.
            while (nxt < len(todo) and len(pending) < AHEAD
                   and not (pending and pending[-1][2] is None)):
                if not await start(todo[nxt]):
                    break
                nxt += 1
            run, held, task = pending.pop(0)
            if task is None:
                inst = run.members[0]
                yield inst, _large(backend, budget, inst)
                continue
            try:
                for inst, data in await task:
                    yield inst, _one(data)
            finally:
                await budget.give(held)
    finally:
        for _, held, task in pending:
            if task is not None:
                await cancelled(task)
                await budget.give(held)


async def _one(data: Buffer) -> AsyncGenerator[Buffer, None]:
    yield data


async def read_one(backend: Backend, inst: Instance, budget: Budget) -> bytes:
    """One whole instance, verified, held within the budget (/metadata's reads)."""
    taken = await budget.take(inst.length + (inst.size if inst.encoding else 0))
    try:
        return await read_row(backend, inst.row())
    finally:
        await budget.give(taken)


async def metadata(backend: Backend, inst: Instance, base: str, budget: Budget
                   ) -> dict[str, Any]:
    """The instance's attributes as DICOM JSON, from its header bytes (a ranged read of the
    first HEADER_BYTES, the whole instance only when the header is longer); bulk data
    (pixels, and any value over 1 KiB of a binary VR) left out."""
    import pydicom

    if inst.encoding or inst.length <= HEADER_BYTES:
        head = await read_one(backend, inst, budget)  # a compressed one is decoded whole
    else:
        head = await backend.load(inst.key, offset=inst.offset, length=HEADER_BYTES)

    def parse(data: bytes, whole: bool) -> dict[str, Any]:
        """The attributes. Not `whole` (a prefix), the parse must stop before the pixel
        data inside the bytes read: pydicom reads a header cut short without a word (a
        sequence's items up to the cut), so that is an EOFError here."""
        f = BytesIO(data)
        ds = pydicom.dcmread(f, force=True, stop_before_pixels=True)
        if not whole and f.tell() >= len(data):
            raise EOFError("the header goes on past the bytes read")
        out: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=1024,
                                              bulk_data_element_handler=lambda _el: "")
        # Left out, not pointed at: this server has no /bulkdata resource.
        return {tag: v for tag, v in out.items() if v.get("BulkDataURI") != ""}

    whole = len(head) >= inst.length
    try:
        return await asyncio.to_thread(parse, head, whole)
    except Exception:  # a header longer than the first read: read it all
        if whole:
            raise
        return await asyncio.to_thread(parse, await read_one(backend, inst, budget), True)


__all__ = ["Budget", "instances", "metadata", "read_one", "runs"]
