"""The ordered read window: directory listings in walk order, read in a pool, in order out."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor

from .checkpoint import Checkpoint
from .read import ReadOptions, ReadResult, read_files
from .walk import Walker

JOB_FILES = 64  # files per read job: GIL hand-offs per job, not per file


async def read_tree(roots: Sequence[bytes], pool: Executor, opts: ReadOptions,
                    cp: Checkpoint | None, *, jobs: int, walk_threads: int = 16
                    ) -> AsyncIterator[ReadResult]:
    """Every file under roots read, as ReadResults in walk order.

    Up to `jobs` slices are read at once (many in flight hide NAS latency); the results
    are handed on in walk order, so what follows is deterministic.
    """
    loop = asyncio.get_running_loop()
    walker = Walker(roots, threads=walk_threads)
    window: deque[asyncio.Future[ReadResult]] = deque()
    queued: deque[tuple[bytes, list[bytes]]] = deque()  # slices not submitted yet
    walked = False

    def submit(directory: bytes, names: list[bytes]) -> asyncio.Future[ReadResult]:
        return loop.run_in_executor(pool, read_files, directory, names, opts, cp)

    async def refill() -> None:
        nonlocal walked
        while len(window) < jobs:
            if not queued:
                if walked:
                    return
                listing = await walker.next()
                if listing is None:
                    walked = True
                    return
                if listing.problems:
                    done: asyncio.Future[ReadResult] = loop.create_future()
                    done.set_result(ReadResult(listing.path, problems=listing.problems))
                    window.append(done)
                files = listing.files
                for i in range(0, len(files), JOB_FILES):
                    queued.append((listing.path, files[i:i + JOB_FILES]))
                continue
            window.append(submit(*queued.popleft()))

    try:
        await refill()
        while window:
            result = await window.popleft()
            if result.rest:  # the job's byte budget ran out: the rest comes next, in order
                window.appendleft(submit(result.directory, result.rest))
            await refill()
            yield result
    finally:
        walker.close()
        for fut in window:
            fut.cancel()
        if window:
            await asyncio.gather(*window, return_exceptions=True)
