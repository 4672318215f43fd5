"""The ordered read window: directory listings in walk order, read in a pool, in order out."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from .checkpoint import Checkpoint
from .read import ReadOptions, ReadResult, read_files
from .records import Problem
from .walk import Walker

JOB_FILES = 64  # files per read job (from one or several directories): hand-offs per job


@dataclass
class Slice:
    """Some files of one directory, and the entries its listing skipped (in order)."""

    directory: bytes
    names: list[bytes]
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Job:
    """What one job read, and the slices it left for the next (its byte budget ran out)."""

    results: list[ReadResult]
    left: list[Slice]


def read_slices(slices: list[Slice], opts: ReadOptions, cp: Checkpoint | None) -> Job:
    """Read slices in order until the byte budget is spent (runs in a pool thread)."""
    results: list[ReadResult] = []
    held = 0
    for i, s in enumerate(slices):
        r = read_files(s.directory, s.names, opts, cp, budget=opts.budget - held)
        r.problems[:0] = s.problems
        results.append(r)
        held += r.held
        if r.rest:
            return Job(results, [Slice(s.directory, r.rest), *slices[i + 1:]])
    return Job(results, [])


async def read_tree(roots: Sequence[bytes], pool: Executor, opts: ReadOptions,
                    cp: Checkpoint | None, *, jobs: int, walk_threads: int = 16
                    ) -> AsyncIterator[ReadResult]:
    """Every file under roots read, as ReadResults in walk order.

    Up to `jobs` jobs are read at once (many in flight hide NAS latency); the results are
    handed on in walk order, so what follows is deterministic.
    """
    loop = asyncio.get_running_loop()
    walker = Walker(roots, threads=walk_threads)
    window: deque[asyncio.Future[Job]] = deque()
    filling: list[Slice] = []
    files = 0
    walked = False

    def submit(slices: list[Slice]) -> asyncio.Future[Job]:
        return loop.run_in_executor(pool, read_slices, slices, opts, cp)

    async def refill() -> None:
        nonlocal walked, filling, files
        while len(window) < jobs and not walked:
            listing = await walker.next()
            if listing is None:
                walked = True
            else:
                names = listing.files
                filling.append(Slice(listing.path, names[:JOB_FILES], listing.problems))
                for i in range(JOB_FILES, len(names), JOB_FILES):
                    filling.append(Slice(listing.path, names[i:i + JOB_FILES]))
                files += len(names)
                if files < JOB_FILES:
                    continue
            if filling:
                window.append(submit(filling))
                filling, files = [], 0

    try:
        await refill()
        while window:
            job = await window.popleft()
            if job.left:  # the rest of this job comes next, in order
                window.appendleft(submit(job.left))
            await refill()
            for result in job.results:
                yield result
    finally:
        walker.close()
        for fut in window:
            fut.cancel()
        if window:
            await asyncio.gather(*window, return_exceptions=True)
