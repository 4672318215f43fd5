"""The ordered read window: directory listings in walk order, read inline or in a pool.

Fast storage (page cache, local disks) is read on the event loop's own thread: a pool
thread would hand the GIL back and forth with the loop at every system call. Slow storage
(a NAS, where each call waits a millisecond or more) is read by many pool threads at once.
The mode follows what reads cost: a job whose files mostly waited on I/O switches to the
pool; now and then one job runs inline again to see whether the storage got fast.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from .clock import IOWait
from .fanout import cancelled
from .read import ReadOptions, ReadResult, Recorded, read_files
from .records import Problem
from .shard import Shard, pruner, root_of
from .walk import Listing, Walker

log = logging.getLogger("pacsmigrate.pipeline")

JOB_FILES = 64  # files per read job (from one or several directories): hand-offs per job
SLOW_FILE = 300e-6  # seconds of I/O wait per file above which reads go to the pool
PROBE_EVERY = 32  # pool jobs between two inline probes


@dataclass
class Slice:
    """Some files of one directory, and the entries its listing skipped (in order)."""

    directory: bytes
    names: list[bytes]
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Job:
    """What one job read, the slices it left (its byte budget ran out), what it cost."""

    results: list[ReadResult]
    left: list[Slice]
    files: int = 0
    io_wait: float = 0.0  # seconds the job's thread waited on the storage
    cpu: float = 0.0


def read_slices(slices: list[Slice], opts: ReadOptions, cp: Recorded | None) -> Job:
    """Read slices in order until the byte budget is spent."""
    waited, cpu = IOWait(), time.thread_time()
    results: list[ReadResult] = []
    left: list[Slice] = []
    held = 0
    for i, s in enumerate(slices):
        r = read_files(s.directory, s.names, opts, cp, budget=opts.budget - held)
        r.problems[:0] = s.problems
        results.append(r)
        held += r.held
        if r.rest:
            left = [Slice(s.directory, r.rest), *slices[i + 1:]]
            break
    return Job(results, left, sum(r.listed for r in results), waited.seconds(),
               time.thread_time() - cpu)


def in_shard(listing: Listing, roots: Sequence[bytes], shard: Shard) -> Listing:
    """The listing's files and skipped entries that are in `shard`'s slice."""
    root = root_of(list(roots), listing.path)
    problems = [p for p in listing.problems
                if _owns(shard, root, listing.path, p.path)] if listing.problems else []
    return Listing(listing.path, shard.select(root, listing.path, listing.files), problems)


def _owns(shard: Shard, root: bytes, listed: bytes, path: bytes) -> bool:
    """Whether a skipped entry is this slice's to report: an entry as a file would be; the
    listed directory itself (unreadable, vanished) by the slice that owns its files, or by
    every slice when each of its files decides for itself (a source root)."""
    if path == listed:
        whole = shard.folder(root, listed)
        return True if whole is None else whole
    directory, _, name = path.rpartition(b"/")
    return shard.keeps(root, directory, name)


class Mode:
    """Inline or pool, from the I/O wait per file of jobs run inline."""

    def __init__(self, pool_jobs: int) -> None:
        self.inline = True
        self.pool_jobs = pool_jobs
        self._since_probe = 0

    def jobs(self) -> int:
        return 1 if self.inline else self.pool_jobs

    def note(self, job: Job, *, inline: bool) -> None:
        if inline:
            waited = job.io_wait / max(job.files, 1)
            if self.inline != (waited < SLOW_FILE):
                log.debug("reads %s: %d files waited %.0f us each (%.0f us CPU)",
                          "inline" if waited < SLOW_FILE else "in the pool", job.files,
                          waited * 1e6, job.cpu / max(job.files, 1) * 1e6)
            self.inline = waited < SLOW_FILE
            self._since_probe = 0
        else:
            self._since_probe += 1
            if self._since_probe >= PROBE_EVERY:
                self.inline = True  # probe: the next job runs inline and decides


async def read_tree(roots: Sequence[bytes], pool: Executor, opts: ReadOptions,
                    cp: Recorded | None, *, jobs: int, walk_threads: int = 16,
                    shard: Shard | None = None) -> AsyncGenerator[ReadResult, None]:
    """Every file under roots read, as ReadResults in walk order.

    In the pool up to `jobs` jobs are read at once; the results are handed on in walk
    order either way, so what follows is deterministic. With `shard`, only its slice of
    the files is read (the walk lists the upper folders and the slice's own subtrees).
    """
    loop = asyncio.get_running_loop()
    walker = Walker(roots, threads=walk_threads, prune=pruner(list(roots), shard))
    mode = Mode(jobs)
    window: deque[tuple[asyncio.Future[Job], bool]] = deque()  # (job, ran inline)
    filling: list[Slice] = []
    files = 0
    walked = False

    def start(slices: list[Slice]) -> tuple[asyncio.Future[Job], bool]:
        if mode.inline and not window:
            done: asyncio.Future[Job] = loop.create_future()
            done.set_result(read_slices(slices, opts, cp))
            return done, True
        return loop.run_in_executor(pool, read_slices, slices, opts, cp), False

    async def refill() -> None:
        nonlocal walked, filling, files
        while len(window) < mode.jobs() and not walked:
            listing = await walker.next()
            if listing is None:
                walked = True
            else:
                if shard is not None:
                    listing = in_shard(listing, roots, shard)
                names = listing.files
                filling.append(Slice(listing.path, names[:JOB_FILES], listing.problems))
                for i in range(JOB_FILES, len(names), JOB_FILES):
                    filling.append(Slice(listing.path, names[i:i + JOB_FILES]))
                files += len(names)
                if files < JOB_FILES:
                    continue
            if filling:
                window.append(start(filling))
                filling, files = [], 0

    try:
        await refill()
        while window:
            fut, inline = window.popleft()
            job = await fut
            mode.note(job, inline=inline)
            if job.left:  # the rest of this job comes next, in order
                window.appendleft(start(job.left))
            await refill()
            for result in job.results:
                yield result
    finally:
        walker.close()
        await cancelled(*(f for f, _ in window))
