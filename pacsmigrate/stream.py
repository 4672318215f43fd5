"""One shard's catalogue and store stage: walk, read and group the sources, hand each plan
to the sink as its study closes, then pack the scattered stragglers by study.

`Migration` (pipeline.py) prepares the state and the store and runs this stage; a Dask
worker runs the same for its slice (cfg.shard). Subclasses may override `walk` or `put`
to make races deterministic in tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass

from . import faults
from .checkpoint import Checkpoint
from .config import MigrateConfig
from .fanout import cancelled
from .group import Closed, Grouper
from .keys import assign_key
from .pack import HINT_SIZE, OPEN_PACKS, Packer
from .planpolicy import PlanPolicy
from .progress import Bar
from .read import KEPT_CHANGING, ReadOptions, ReadResult
from .readproc import NETWORK_FS, fs_type, read_tree_apart, wanted
from .reads import in_shard, read_tree
from .records import FILE, TAR, BundlePlan, Member, Problem, member_bound
from .retention import covers, lock_of, manifest_fields
from .sample import slice_of
from .shard import CUT, Shard, pruner
from .sink import Sink, StoreSink
from .slicing import plan as plan_slices
from .slicing import with_plan
from .source import hash_unchanged
from .stats import Stats
from .walk import Walker

# Log lines name object keys (keyed hashes) and counts, never source paths, names or UIDs.
log = logging.getLogger("pacsmigrate.pipeline")

MAX_PASSES = 3
SPILL_BATCH = 1000


@dataclass
class SourceStream:
    """The sources of one run (or one slice of it) into a sink, in bounded memory."""

    cfg: MigrateConfig
    cp: Checkpoint
    sink: Sink
    stats: Stats
    pool: Executor
    secret: bytes
    policy: PlanPolicy

    def __post_init__(self) -> None:
        self.salt = self.cp.key_salt()  # fixed for the run (keys.bundle_id)
        klass = lambda plan: self.policy.pack_class(self.cp, plan)
        self.packer = Packer(self.cfg.pack, klass)
        # A dry run without --pack counts what --pack HINT_SIZE would make of its plans
        # (when this run's options would take that --pack).
        self.hint = Packer(HINT_SIZE, klass) if self.cfg.dry_run and not self.cfg.pack \
            and self.cfg.packs(HINT_SIZE) else None
        self.spills = SpillBehind(self.cp)

    async def run(self) -> None:
        """Walk and store everything; on an error the sink's uploads in flight stop."""
        cp, s = self.cp, self.stats
        try:
            await self.walk()
            await cp.call(cp.settle_vanished)
            log.info("walk: %d files seen, %d read (%d unsorted), %d already migrated, %d "
                     "spilled, %d skipped, %d failed", s.files_seen, s.classified,
                     sum(s.unsorted.values()), s.already_migrated, s.spilled,
                     sum(s.skipped.values()), sum(s.failed.values()))
            await self.stragglers()
        except BaseException:
            await self.spills.cancel()
            if isinstance(self.sink, StoreSink):
                await self.sink.cancel()
            raise

    async def walk(self) -> None:
        """Walk, read and group the sources; plans go to the sink as studies close."""
        cp, sink = self.cp, self.sink
        cfg = self.cfg
        roots = [os.fsencode(os.path.abspath(s)) for s in cfg.sources]
        opts = ReadOptions(self.secret, hold_max=cfg.hold_max, header_bytes=cfg.header_bytes,
                           dry_run=cfg.dry_run,
                           skip_migrated=cp.counts()["index"] > 0, filters=cfg.filters)
        grouper = Grouper(bundle_size=cfg.bundle_size, large_file=cfg.large_file,
                          memory=cfg.memory // 2 - OPEN_PACKS * cfg.pack)
        problems: list[Problem] = []
        bar = Bar("read", total_bytes=None, total_files=None, enabled=cfg.progress, position=0)
        shard = cfg.shard
        if cfg.sample:  # the whole tree listed (no file opened), then one slice read
            self.stats.counted_files = await count_files(roots)
            shard = with_plan(slice_of(cfg.sample), await plan_slices(roots, cfg.sample, CUT))
        # A separate counting walk gives the bars their totals (restic's way).
        counting = asyncio.create_task(count_for(roots, [bar, sink.bar], shard)) \
            if cfg.progress else None
        started = time.monotonic()
        try:
            await self.read_and_group(roots, opts, grouper, problems, bar, shard)
            self.stats.read_seconds = time.monotonic() - started
            # The walk is over: whatever the counting walk got to, the total is known.
            for b in (bar, sink.bar):
                b.total_files = self.stats.files_seen
        finally:
            bar.close()
            await cancelled(counting)
        await cp.call(cp.record_problems, problems)
        out = Closed()
        await self.spills.settle()
        spilled = await cp.call(cp.spilled_groups, list(grouper.open))
        grouper.finish(out, spilled=spilled.__contains__)
        await self.emit(out)
        await self.flush_packs()
        await self.spills.settle()

    async def read_and_group(self, roots: list[bytes], opts: ReadOptions, grouper: Grouper,
                             problems: list[Problem], bar: Bar, shard: Shard | None) -> None:
        cp = self.cp
        s = self.stats
        last, here = b"", [0, 0]
        add = grouper.add
        async with aclosing(self.sources(roots, opts, shard)) as results:
            async for result in results:
                s.files_seen += result.listed
                s.bytes_seen += result.seen_bytes
                s.already_migrated += result.migrated
                if result.filtered:
                    s.filtered.update(result.filtered)
                s.classified += len(result.members)
                s.count_problems(result.problems)
                problems += result.problems
                out = Closed()
                if result.listed:  # a sample's spread: files and bytes by folder
                    if result.directory != last:
                        s.fold_folder(here)
                        here = [0, 0]
                        last = result.directory
                    here[0] += result.listed
                    here[1] += result.seen_bytes
                grouper.enter(result.directory, out)
                for m in result.members:  # (one pass: the unsorted counted on the way)
                    if m.about.reason:
                        s.unsorted[m.about.reason] += 1
                    add(m, out)
                if out.spill or out.plans:
                    await self.emit(out)
                if len(problems) >= SPILL_BATCH:
                    await cp.call(cp.record_problems, problems[:])
                    problems.clear()
                bar.update(files=result.seen, nbytes=result.seen_bytes)
                faults.point("mid-catalogue")
        s.fold_folder(here)

    def sources(self, roots: list[bytes], opts: ReadOptions, shard: Shard | None
                ) -> AsyncGenerator[ReadResult, None]:
        """The files read, in walk order: by a read process of their own (readproc.py) or
        by this one (a re-run whose state is on a network file system: the child would
        read the index through a second LMDB reader there)."""
        cfg = self.cfg
        jobs = 2 * cfg.read_threads
        if wanted(cfg.read_process) and not (
                opts.skip_migrated and fs_type(cfg.state_dir) in NETWORK_FS):
            return read_tree_apart(roots, opts, state_dir=cfg.state_dir,
                                   read_threads=cfg.read_threads, jobs=jobs, shard=shard)
        return read_tree(roots, self.pool, opts, self.cp, jobs=jobs, shard=shard)

    async def emit(self, out: Closed) -> None:
        if out.spill:
            for m in out.spill:
                m.data = None  # read again when its study is packed
            self.stats.spilled += len(out.spill)
            await self.spills.add(out.spill)
        for plan in out.plans:
            await self.put(plan)

    async def put(self, plan: BundlePlan) -> None:
        """Store a closed plan: packed with other small studies first, with --pack."""
        for ready in self.packer.add(plan):
            await self.store(ready)
        if self.hint is not None and self.hint.takes(plan):
            self.stats.packable_objects += 1
            self.stats.packs += len(self.hint.add(plan))  # the packs it closed

    async def flush_packs(self) -> None:
        for pack in self.packer.flush():
            await self.store(pack)
        if self.hint is not None:
            self.stats.packs += len(self.hint.flush())

    async def store(self, plan: BundlePlan) -> None:
        sink = self.sink
        if plan.kind == FILE and isinstance(sink, StoreSink) and self.cfg.dedup:
            plan = await self.copy_of_large(sink, plan)
        plan.policy = sink.policy_of(plan)  # before its key, which depends on it
        assign_key(self.cfg.dest, plan, self.salt)
        await sink.put(plan)

    async def copy_of_large(self, sink: StoreSink, plan: BundlePlan) -> BundlePlan:
        """A large file that is a copy of one stored (same blake3, locked as long) becomes a
        bundle of that one copy: its manifest points at the stored bytes, none are sent.
        Hashed first only when a large file of its size is stored already."""
        cp, m = self.cp, plan.members[0]
        if not await cp.call(cp.has_large_file, m.size):
            return plan
        loop = asyncio.get_running_loop()
        digest = await loop.run_in_executor(self.pool, hash_unchanged, m.path, m.size,
                                            m.mtime_ns)
        found = await cp.call(cp.stored_content, m.about, digest) if digest else None
        need = lock_of(manifest_fields(self.policy.lock_of(cp, plan)[0]))
        if found is None or not covers(found.lock, need):
            return plan
        m.blake3 = digest or ""
        return BundlePlan(plan.group, TAR, [m], size=m.size)

    async def stragglers(self) -> None:
        """Pack the spilled files by study, then those whose study changed since they were
        read (or that changed while sent), a few passes at most; what is left stays in
        the spill, reported as pending."""
        cp, sink = self.cp, self.sink
        if self.cfg.dry_run:  # nothing is stored, so one pass plans every spilled file
            await self.pack_spill()
            await sink.drain()
            await cp.call(cp.clear, "spill")
            return
        for attempt in range(MAX_PASSES + 1):
            # The first pass starts at once, beside the walk's last uploads: its files are
            # in none of them (only a drain finds files moved back to the spill, for the
            # next pass). Every later pass waits for the one before: a spilled file leaves
            # the spill only when its object commits.
            if attempt or not (await cp.call(cp.counts))["spill"]:
                await sink.drain()
            if isinstance(sink, StoreSink) and sink.moved:
                moved, sink.moved = sink.moved, []
                await cp.call(cp.spill, moved)
            if attempt == MAX_PASSES or not (await cp.call(cp.counts))["spill"]:
                break
            await self.pack_spill()
        if isinstance(sink, StoreSink) and sink.changing:
            await self.kept_changing(list(sink.changing.values()))

    async def kept_changing(self, members: list[Member]) -> None:
        """Files whose upload was aborted on every pass because they changed while sent:
        reported as such (a problem, still to migrate) rather than as merely pending."""
        cp = self.cp
        left = await cp.call(cp.still_spilled, members)
        if not left:
            return
        await cp.call(cp.record_problems, [Problem(m.path, KEPT_CHANGING, final=False)
                                           for m in left])
        await cp.call(cp.unspill, left)
        self.stats.failed[KEPT_CHANGING] += len(left)

    async def pack_spill(self) -> int:
        """One pass over the spill in (study, path) order; returns the plans it made.

        Files a plan could not store stay in the spill (or come back to it) for the next.
        """
        cp = self.cp
        cfg = self.cfg
        after = b""
        current: BundlePlan | None = None
        handled = 0
        while batch := await cp.call(cp.spill_after, after, SPILL_BATCH):
            for _, m in batch:
                if m.size > cfg.large_file:
                    await self.put(BundlePlan(m.group, FILE, [m], size=m.size))
                    handled += 1
                    continue
                if current is not None and (current.group != m.group or current.bound
                                            + member_bound(m) > cfg.bundle_size):
                    await self.put(current)
                    handled += 1
                    current = None
                if current is None:
                    current = BundlePlan(m.group, TAR)
                current.add(m)
            after = batch[-1][0]
        if current is not None:
            await self.put(current)
            handled += 1
        await self.flush_packs()
        return handled


class SpillBehind:
    """Spilled files written to the checkpoint behind the walk, a batch at a time.

    The walk does not wait for them: the spill is read only after the walk (`settle` first)
    and is cleared at every run's start, so a batch lost to a crash costs nothing (the
    files are not in the index; the next run reads them again). Waiting for each write
    made the walk queue behind the commits' fsyncs: a third of a small-file run's wall time.
    One batch is written at a time, in order; a full buffer waits for the one before.
    """

    def __init__(self, cp: Checkpoint, batch: int = SPILL_BATCH) -> None:
        self.cp = cp
        self.batch = batch
        self.waiting: list[Member] = []
        self.writing: asyncio.Future[None] | None = None

    async def add(self, members: list[Member]) -> None:
        self.waiting += members
        if len(self.waiting) >= self.batch:
            await self._write()

    async def _write(self) -> None:
        if self.writing is not None:
            writing, self.writing = self.writing, None
            await writing
        if self.waiting:
            batch, self.waiting = self.waiting, []
            self.writing = asyncio.ensure_future(self.cp.call(self.cp.spill, batch))

    async def settle(self) -> None:
        """Every file handed in is in the checkpoint's spill."""
        await self._write()  # the write in flight done, the files waiting handed on
        await self._write()  # ... and done

    async def cancel(self) -> None:
        await cancelled(self.writing)
        self.writing = None


async def count_for(roots: list[bytes], bars: list[Bar], shard: Shard | None = None) -> None:
    """Count the files under roots (in the shard's slice), then give the bars their total."""
    n = await count_files(roots, shard)
    for bar in bars:
        bar.total_files = n


async def count_files(roots: list[bytes], shard: Shard | None = None) -> int:
    """The regular files under roots (in the shard's slice), from listings alone."""
    walker = Walker(roots, prune=pruner(roots, shard))
    n = 0
    try:
        while (got := await walker.next()) is not None:
            n += len(in_shard(got, roots, shard).files if shard is not None else got.files)
            if walker.listings % 64 == 0:
                await asyncio.sleep(0)  # listings inline on fast storage: let the run go on
    finally:
        walker.close()
    return n
