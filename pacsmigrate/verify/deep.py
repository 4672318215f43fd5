"""The --deep pass: members read back by coalesced range GETs and hashed against the index."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import blake3

from ..encoding import hasher
from ..errors import BackendError, ObjectNotFoundError, PermanentBackendError
from ..fanout import workers
from ..progress import Bar
from .common import Job, Sampler, db_batches
from .findings import (
    MEMBER_ALTERED,
    MEMBER_UNREADABLE,
    OBJECT_MISSING,
    UNCOMMITTED_OBJECT,
    Finding,
)
from .workspace import Member

_EMPTY_BLAKE3 = blake3.blake3(b"").hexdigest()


class _RunHash:
    """Incremental blake3 of one run's members, fed its bytes in order, chunk by chunk."""

    def __init__(self, run: list[Member]) -> None:
        self.run = run
        self.hashers: list[Any] = [None] * len(run)
        self.finished = [False] * len(run)
        self.first = 0  # members before it are finished: later chunks skip them

    def feed(self, pos: int, data: bytes) -> list[tuple[Member, str]]:
        """Hash the slices of data (which starts at pos) that belong to members; return
        the members now complete with their digests. Runs in a hashing thread."""
        view = memoryview(data)
        end = pos + len(data)
        done = []
        run, i = self.run, self.first
        while i < len(run) and run[i].offset < end:
            m = run[i]
            if not self.finished[i] and m.end > pos:
                h = self.hashers[i] or hasher(m.encoding)
                h.update(view[max(m.offset, pos) - pos:min(m.end, end) - pos])
                if m.end <= end:
                    done.append((m, h.hexdigest()))
                    self.finished[i], self.hashers[i] = True, None
                else:
                    self.hashers[i] = h
            i += 1
        while self.first < len(run) and self.finished[self.first]:
            self.first += 1
        return done

    def unfinished(self) -> list[Member]:
        return [m for m, f in zip(self.run, self.finished) if not f]


def _runs(members: list[Member], max_gap: int) -> list[list[Member]]:
    """Members (sorted by offset) grouped into runs close enough to read as one range."""
    runs: list[list[Member]] = []
    end = 0
    for m in members:
        if runs and m.offset - end <= max_gap:
            runs[-1].append(m)
        else:
            runs.append([m])
        end = max(end, m.end)
    return runs


async def check_members(job: Job, sample: float | None, seed: int) -> None:
    """Sort the (sampled) index rows by object, then read each object's members back."""
    assert job.by_object is not None
    by_object = job.by_object
    sampler = Sampler(job.n["rows"], sample, seed)
    selected = nbytes = 0
    async for batch in db_batches(job.cp, "index"):
        chosen = [row for _, row in batch if sampler.take()]
        by_object.add(chosen)
        selected += len(chosen)
        nbytes += sum(int(r["length"]) for r in chosen)
    job.n["members_selected"] = selected
    bar = Bar("verify members", total_bytes=nbytes, total_files=selected,
              enabled=job.progress)
    pool = ThreadPoolExecutor(max_workers=job.cfg.concurrency, thread_name_prefix="hash")

    async def objects() -> AsyncIterator[tuple[str, list[Member]]]:
        for key, members in by_object.objects():
            if not await job.cp.call(job.cp.has_object, key):
                job.findings.add(Finding(UNCOMMITTED_OBJECT, key,
                                         detail=f"{len(members)} index rows"))
            if by_object.is_missing(key):  # reported by the store pass already
                job.n["members_unverified"] += len(members)
                continue
            yield key, members

    async def check(item: tuple[str, list[Member]]) -> None:
        await _object_members(job, *item, pool=pool, bar=bar)

    try:
        await workers(objects(), check, job.cfg.concurrency)
    finally:
        pool.shutdown(wait=False)
        bar.close()


def _member_done(job: Job, key: str, m: Member, digest: str, bar: Bar) -> None:
    job.n["members_checked"] += 1
    bar.update(files=1, nbytes=m.length)
    if digest != m.blake3:
        job.findings.add(Finding(
            MEMBER_ALTERED, key, m.path,
            f"bytes {m.offset}-{m.end - 1}: blake3 differs from the index"))


async def _object_members(job: Job, key: str, members: list[Member], *, pool: Executor,
                          bar: Bar) -> None:
    for m in members:
        if m.length == 0:
            _member_done(job, key, m, _EMPTY_BLAKE3, bar)
    runs = _runs([m for m in members if m.length > 0], job.cfg.max_gap)
    for i, run in enumerate(runs):
        try:
            await _read_run(job, key, run, pool=pool, bar=bar)
        except ObjectNotFoundError:
            # Deleted since the store pass looked: nothing more to read from it.
            job.findings.add(Finding(OBJECT_MISSING, key, detail="while reading members"))
            job.n["members_unverified"] += sum(len(r) for r in runs[i:])
            return


async def _read_run(job: Job, key: str, run: list[Member], *, pool: Executor, bar: Bar
                    ) -> None:
    """Read one run of members in chunks of at most cfg.chunk bytes, hashing as they come."""
    loop = asyncio.get_running_loop()
    state = _RunHash(run)
    pos, end = run[0].offset, max(m.end for m in run)
    while pos < end:
        want = min(job.cfg.chunk, end - pos)
        try:
            data = await job.backend.load(key, offset=pos, length=want)
        except (ObjectNotFoundError, PermanentBackendError):
            raise
        except BackendError as exc:  # e.g. InvalidRange: the object is shorter
            _unreadable(job, key, state, f"reading bytes {pos}-{pos + want - 1}: {exc}")
            return
        job.n["range_requests"] += 1
        job.n["bytes_read"] += len(data)
        for m, digest in await loop.run_in_executor(pool, state.feed, pos, data):
            _member_done(job, key, m, digest, bar)
        if len(data) < want:
            _unreadable(job, key, state, f"object ends at byte {pos + len(data)}")
            return
        pos += want


def _unreadable(job: Job, key: str, state: _RunHash, why: str) -> None:
    for m in state.unfinished():
        job.n["members_unverified"] += 1
        job.findings.add(Finding(MEMBER_UNREADABLE, key, m.path, why))
