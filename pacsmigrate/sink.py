"""Where closed plans go: stored (intent, pack, upload, commit), or in a dry run, counted."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial

from . import alloc, faults
from .backends import Backend
from .backends.limits import planned_requests
from .bundle import Built, Known, tar_length
from .checkpoint import Checkpoint
from .commit import GroupWriter
from .costs import NO_PRICES, PriceTable, Tally, as_json, describe, estimate
from .group import MEMBER_HELD
from .partbuf import Lease, PartBuffers
from .progress import Bar
from .records import FILE, TAR, BundlePlan, Entry, Member, Stored, StoredObject, now_iso
from .retention import manifest_fields
from .stats import Stats
from .tables import PlanRow, plan_row
from .tiers import CLASS_META, YEAR_META, billed_size, study_year
from .upload import store

log = logging.getLogger("pacsmigrate.pipeline")
# A dry run's plan rows per transaction, encoded as they come (an Entry would keep its
# header's strings alive). Each transaction rewrites the B-tree pages its rows touch and
# waits for an fsync while the walk waits: at 2,000 Entries a 100k dry run waited 1.0 s,
# at 4,000 encoded rows 0.3 s for 2 MiB more RssAnon (16,000 Entries: +22 MiB at 100k,
# 1.27x between 100k and 1M). Writing them behind the walk instead cost more CPU than it
# saved on 2 cores (the writer thread takes the GIL from the loop).
PLAN_BATCH = 4_000
# A commit waits up to COMMIT_LINGER s for other acknowledged objects, until COMMIT_ENOUGH
# files wait (fewer once the state is large: Checkpoint.commit_files). Acknowledged objects leave the flight's room (their bytes are sent); while
# COMMIT_BACKLOG files wait for their commit (a slow state disk), no new plan starts: their
# records (~2 KiB a file) stay bounded.
COMMIT_LINGER = 0.5
COMMIT_ENOUGH = 10_000
COMMIT_BACKLOG = 4 * COMMIT_ENOUGH


def requests_for(plan: BundlePlan, *, scheme: str, part_size: int,
                 length: Callable[[BundlePlan], int] | None = None,
                 shrinks: Callable[[BundlePlan], bool] | None = None) -> int:
    """Store requests one plan costs: one PUT, or its parts and the store's extra requests
    (S3: create and complete; Azure: the commit); a raw file's sidecar. A tar is longer
    than its files' bytes and at most plan.bound: where the two give other counts, or
    where it `shrinks` (deduplicated copies) and has parts to lose, its exact `length`
    (bundle.tar_length) decides."""
    count = partial(planned_requests, scheme, plan.size, part_size=part_size)
    if plan.kind == FILE:
        return count() + 1
    fewest = count(length=plan.size)
    if length is not None and (fewest != count(length=plan.bound) or (
            fewest > 1 and shrinks is not None and shrinks(plan))):
        return count(length=length(plan))
    return fewest


# What a member costs a plan in flight beside its bytes: what it held in the grouper, and
# its Entry and manifest line. Measured (tracemalloc) on a pack of 6,600 files of 1.2 KiB:
# 2.0 KiB a member, more than the file's own bytes.
MEMBER_COST = MEMBER_HELD + 768


def parts_held(plan: BundlePlan, *, part: int, concurrency: int) -> int:
    """The part buffers a tar plan holds at most: its parts stay until sent, up to
    concurrency + 1 of them (the next is built while others are in flight)."""
    return 0 if plan.kind == FILE else min(plan.bound, part * (concurrency + 1))


def held_in_flight(plan: BundlePlan, *, part: int, concurrency: int) -> int:
    """The memory storing the plan holds at most: its members read at the start and the
    parts they are copied into (a member's bytes go as they are copied), what each member
    costs beside its bytes, and for files read as it is packed, the largest of them. A
    large file streamed alone holds its parts in flight."""
    if plan.kind == FILE:
        return min(plan.size, part * (concurrency + 1))
    held = sum(m.size for m in plan.members if m.data is not None)
    later = [m.size for m in plan.members if m.data is None]
    return (held + parts_held(plan, part=part, concurrency=concurrency)
            + (max(later) if later else 0) + MEMBER_COST * len(plan.members))


# A plan -> the storage class it goes to (None: the store's default).
Classes = Callable[[BundlePlan], str | None]
# A plan -> the retention lock metadata of its object.
Locks = Callable[[BundlePlan], dict[str, str]]


class Sink:
    """Counts what every closed plan holds; subclasses store it or record the plan."""

    def __init__(self, cp: Checkpoint, stats: Stats, bar: Bar, *,
                 classes: Classes | None = None, locks: Locks | None = None) -> None:
        self.cp = cp
        self.stats = stats
        self.bar = bar
        self.classes = classes
        self.locks = locks  # counts the studies a retention map misses when asked

    def storage_class(self, plan: BundlePlan) -> str | None:
        return self.classes(plan) if self.classes else None

    def policy_of(self, plan: BundlePlan) -> dict[str, str]:
        """How the store is to keep the plan's object, as its metadata: the storage class
        (each store maps it to its classes or tiers) with the study's year (tagged beside
        it, for lifecycle rules) and the retention lock (each store maps it to its lock).
        Asked once a plan, before its key (the locks count studies)."""
        policy: dict[str, str] = {}
        storage_class = self.storage_class(plan)
        if storage_class:
            policy[CLASS_META] = storage_class
            year = study_year(plan.study_date)
            if year:
                policy[YEAR_META] = year
        if self.locks is not None:
            policy.update(self.locks(plan))
        return policy

    def _count(self, plan: BundlePlan) -> None:
        s = self.stats
        s.planned_objects += 1
        s.planned_files += len(plan.members)
        s.planned_bytes += plan.size
        if self.classes:
            chosen = self.storage_class(plan)
            name = chosen or "the store's default"
            s.objects_by_class[name] += 1
            s.bytes_by_class[name] += plan.size
            billed = billed_size(chosen, plan.size)
            s.billed_by_class[name] += billed
            s.small_by_class[name] += billed > plan.size

    async def put(self, plan: BundlePlan) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        """Wait until every plan put is done."""


class PlanSink(Sink):
    """A dry run: record each planned file with the blake3 it read; store nothing; tally
    what the plan would cost with `prices`."""

    def __init__(self, cp: Checkpoint, stats: Stats, bar: Bar, *, scheme: str,
                 part_size: int, classes: Classes | None = None,
                 prices: PriceTable | None = None, locks: Locks | None = None,
                 dedup: bool = True) -> None:
        super().__init__(cp, stats, bar, classes=classes, locks=locks)
        self.dedup = dedup
        self._stored: bool | None = None  # whether the state holds committed content
        self.scheme = scheme
        self.part_size = part_size
        self.prices = prices
        self.tally = Tally()
        self._batch: list[PlanRow] = []
        self._run = os.urandom(8)  # marks the studies this dry run plans (record_plan_rows)

    async def put(self, plan: BundlePlan) -> None:
        self._count(plan)
        requests = requests_for(plan, scheme=self.scheme, part_size=self.part_size,
                                length=partial(self._length, plan.policy),
                                shrinks=self._has_copies if self.dedup else None)
        self.stats.planned_requests += requests
        if self.prices is not None:  # billed as stored: a bundle's tar, not its files
            stored = self._length(plan.policy, plan) if plan.kind == TAR else plan.size
            self.tally.add(self.prices, self.storage_class(plan), stored,
                           [m.size for m in plan.members], requests=requests,
                           scheme=self.scheme, part_size=self.part_size)
        self._batch.extend(plan_row(Entry(m.path, 0, m.size, m.blake3, m.size, m.mtime_ns,
                                          m.about)) for m in plan.members)
        if len(self._batch) >= PLAN_BATCH:
            await self.drain()

    def _length(self, lock: dict[str, str] | None, plan: BundlePlan) -> int:
        """The tar the run will make of `plan` (as its object's manifest records its lock,
        with the copies deduplication finds), if its files stay as they were read."""
        return tar_length(plan, created=now_iso(), retention=manifest_fields(lock),
                          known=self.cp.stored_content if self.dedup else None)

    def _has_copies(self, plan: BundlePlan) -> bool:
        """Whether deduplication stores fewer bytes than the plan's files: a content twice
        in it, or one committed already."""
        asked = [(m.about, m.blake3) for m in plan.members if m.size and m.blake3]
        if len({d for _, d in asked}) < len(asked):
            return True
        if self._stored is None:  # a dry run commits none: asked once
            self._stored = self.cp.counts().get("content", 0) > 0
        return self._stored and bool(self.cp.stored_contents(asked))

    async def drain(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self.stats.planned_studies += await self.cp.call(self.cp.record_plan_rows, batch,
                                                             self._run)
        if self.prices is not None:
            lines = estimate(self.prices, self.tally)
            self.stats.cost = as_json(self.prices, lines)
            self.stats.cost_lines = describe(self.prices, lines)
        else:
            self.stats.cost_lines = [NO_PRICES]


class StoreSink(Sink):
    """Write-ahead intents, then pack, upload and group-commit each plan, many at once.

    Bounded: at most twice `concurrency` plans and `memory` bytes of file data in flight;
    `put` waits for room, which is how a slow store slows the walk down.
    """

    def __init__(self, cp: Checkpoint, stats: Stats, bar: Bar, *, backend: Backend,
                 pool: Executor, secret: bytes, concurrency: int, memory: int,
                 expect: bool, started: float, classes: Classes | None = None,
                 locks: Locks | None = None, dedup: bool = True, compress: str = "") -> None:
        super().__init__(cp, stats, bar, classes=classes, locks=locks)
        self.dedup = dedup
        self.compress = compress
        self.backend = backend
        self.pool = pool
        self.secret = secret
        self.intents: GroupWriter[BundlePlan] = GroupWriter(cp, self._intents)
        # plan key -> its members' digests -> where that content is stored (or None)
        self._found: dict[str, dict[str, Stored | None]] = {}
        # Commits linger a little for company (commit.GroupWriter): not when no other object
        # is in flight, as at the end of a run (an acknowledged one has left the flight).
        self.commits: GroupWriter[StoredObject] = GroupWriter(
            cp, cp.commit_objects, linger=COMMIT_LINGER,
            enough=lambda: min(COMMIT_ENOUGH, cp.commit_files() or COMMIT_ENOUGH),
            weight=lambda obj: len(obj.entries),
            idle=lambda: self.in_flight == 0)
        self.expect = expect
        self.started = started
        self.room = asyncio.Condition()
        self.concurrency = concurrency
        self.objects_max = 2 * concurrency  # packing overlaps the requests of others
        self.memory_max = memory  # in flight and idle part buffers together
        self.buffers = PartBuffers()
        self.in_flight = 0
        self.in_flight_bytes = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.error: BaseException | None = None
        # Packed after the walk: files whose study changed since they were read, and those
        # whose upload was aborted because they changed while being sent.
        self.moved: list[Member] = []
        self.changing: dict[bytes, Member] = {}  # uploads aborted as the file changed
        alloc.tune()  # part buffers come and go: glibc is to unmap them, not keep them

    async def put(self, plan: BundlePlan) -> None:
        self._raise()
        part = self.backend.part_size(plan.size)
        held = held_in_flight(plan, part=part, concurrency=self.concurrency)
        parts = parts_held(plan, part=part, concurrency=self.concurrency)
        async with self.room:
            await self.room.wait_for(lambda: self.error is not None or (
                self.in_flight < self.objects_max
                and (self.in_flight_bytes + held <= self.memory_max or not self.in_flight)
                and self.commits.pending < COMMIT_BACKLOG))
            self._raise()
            # Idle part buffers serve it where they fit (what they hold beyond its estimate
            # is added to it); the others go if the budget needs their room.
            lease = self.buffers.reserve(parts, min(part, parts))
            held += max(0, lease.bytes - parts)
            self.in_flight += 1
            self.in_flight_bytes += held
            self.buffers.shrink(self.memory_max - self.in_flight_bytes)
        self._count(plan)
        task = asyncio.create_task(self._one(plan, held, lease))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.error is None:
            self.error = task.exception()

    async def _one(self, plan: BundlePlan, held: int, lease: Lease) -> None:
        try:
            # Write-ahead before any byte of it is sent (plans share transactions).
            await self.intents.put(plan)
            faults.point("after-intent")
            stored, built = await self._upload(plan, lease)
        finally:
            # Its room in flight back once its bytes are acknowledged (or it failed): its
            # commit may linger for company (self.commits) without holding up the walk.
            self.buffers.give(lease)
            async with self.room:
                self.in_flight -= 1
                self.in_flight_bytes -= held
                self.room.notify_all()
            self.commits.poke()
            alloc.release()
        await self._record(plan, stored, built)

    async def _upload(self, plan: BundlePlan, lease: Lease
                      ) -> tuple[StoredObject | None, Built]:
        expect = None
        if self.expect:
            got = await self.cp.call(self.cp.planned_hashes, [m.path for m in plan.members])
            expect = {m.path: g[2] for m, g in zip(plan.members, got, strict=True)
                      if g is not None and (g[0], g[1]) == (m.size, m.mtime_ns) and g[2]}
        return await store(plan, self.backend, self.pool, secret=self.secret,
                           expect=expect, known=self._known(plan) if self.dedup else None,
                           compress=self.compress, take=lease.take)

    async def _record(self, plan: BundlePlan, stored: StoredObject | None, built: Built
                      ) -> None:
        """Commit what the store acknowledged (or forget the intent) and count it."""
        s = self.stats
        if stored is None:
            await self.cp.call(self.cp.drop_intent, plan.key)
            log.info("nothing stored for %s: its files moved, vanished or changed", plan.key)
        else:
            try:
                await self.commits.put(stored)
            finally:
                async with self.room:  # the commit backlog shrank (or failed)
                    self.room.notify_all()
            n = len(stored.entries)
            faults.point("after-commit")
            s.files_migrated += n
            if not s.first_object_seconds:
                s.first_object_seconds = round(time.monotonic() - self.started, 3)
            log.info("%s %s: %d files, %d bytes", "adopted" if stored.adopted else "stored",
                     plan.key, n, stored.size)
            if stored.adopted:
                s.objects_adopted += 1
            else:
                s.objects_uploaded += 1
                s.bundles_uploaded += plan.kind == TAR
                s.bytes_uploaded += stored.size
        s.compressed_files += built.compressed
        s.compressed_from += built.compressed_from
        s.compressed_to += built.compressed_to
        s.duplicate_files += built.duplicates
        s.duplicate_bytes += built.duplicate_bytes
        s.reread_changed += built.reread
        s.reread_bytes += built.reread_bytes
        s.moved_study += len(built.moved)
        s.dry_run_mismatch += len(built.dry_run_mismatch)
        s.count_problems(built.problems)
        self.moved.extend(built.moved + built.again)
        self.changing.update((m.path, m) for m in built.again)
        if built.problems:
            await self.cp.call(self.cp.record_problems, built.problems)
        if built.moved or built.problems:
            gone = {m.path for m in built.moved} | {p.path for p in built.problems}
            await self.cp.call(self.cp.unspill, [m for m in plan.members if m.path in gone])
        self.bar.update(files=len(plan.members), nbytes=plan.size)

    def _intents(self, plans: list[BundlePlan]) -> None:
        """Write-ahead intents (in the LMDB thread); with dedup, in the same trip, where the
        plans' members' content is stored already: one hand-off per batch of plans, not
        one more per plan (each makes the event loop wait for the GIL)."""
        self.cp.put_intents(plans)
        if not self.dedup:
            return
        asked = {m.blake3: m.about for p in plans for m in p.members if m.blake3}
        # Every digest asked, None where not stored: one dict the batch's plans share.
        found: dict[str, Stored | None] = dict.fromkeys(asked)
        if asked:
            found.update(self.cp.stored_contents([(a, d) for d, a in asked.items()]))
        for p in plans:
            self._found[p.key] = found

    def _known(self, plan: BundlePlan) -> Known:
        """Where the plan's members' content is stored already (looked up with its intent);
        a digest learnt only when packed is looked up when met."""
        found = self._found.pop(plan.key, {})
        lookup = self.cp.stored_content
        return lambda about, d: found[d] if d in found else lookup(about, d)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.wait(set(self.tasks))
        self.stats.commit_transactions = self.commits.transactions
        b = self.buffers
        log.info("part buffers: %d allocated, %d parts copied into one used before, "
                 "%d reserved for a plan, %d bytes idle, %d still referred to when their "
                 "plan ended", b.made, b.reused, b.reserved, b.idle_bytes, b.held)
        self._raise()

    async def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks))
