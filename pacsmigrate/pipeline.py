"""The migrate run: walk, read, group and store in one stream, then the scattered stragglers."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from datetime import UTC, datetime

from . import faults
from .backends import Backend, Measured, open_backend
from .checkpoint import Checkpoint
from .commit import abandon, reconcile
from .config import MigrateConfig
from .costs import default_table
from .errors import first_error
from .group import Closed, Grouper
from .keys import assign_key
from .progress import Bar, keep_writing
from .read import ReadOptions
from .reads import in_shard, read_tree
from .records import DICOM, FILE, TAR, BundlePlan, Problem
from .report import write_report
from .retention import covers, lock_of, manifest_fields
from .setup import check_object_lock, check_state, key_secret
from .shard import Shard
from .sink import Classes, Locks, PlanSink, Sink, StoreSink
from .source import hash_unchanged
from .stats import Stats
from .walk import Walker

# Log lines name object keys (keyed hashes) and counts, never source paths, names or UIDs:
# paths often contain patient IDs (PatientID/StudyDate/... layouts).
log = logging.getLogger("pacsmigrate.pipeline")

MAX_PASSES = 3
COMPACT_MIN_ROWS = 1000
SPILL_BATCH = 1000


class Migration:
    """One run of `migrate`; build with a config, then `await run()`."""

    def __init__(self, cfg: MigrateConfig, *, backend: Backend | None = None) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.backend: Backend | None = backend
        self.secret = b""
        self.pool = ThreadPoolExecutor(max_workers=cfg.read_threads, thread_name_prefix="read")
        self.today = datetime.now(UTC).date()  # study ages and locks count from the run's day

    async def run(self) -> Stats:
        try:
            return await self._run()
        except BaseExceptionGroup as group:
            raise first_error(group) from group

    async def _run(self) -> Stats:
        started = time.monotonic()
        cfg = self.cfg
        async with AsyncExitStack() as stack:
            cp = Checkpoint(cfg.state_dir)
            stack.callback(cp.close)
            stack.callback(self.pool.shutdown, wait=True)
            check_state(cp, cfg)
            log.info("%s of %d source tree(s) to %s", "dry run" if cfg.dry_run
                     else "migration", len(cfg.sources), cfg.dest)
            if not cfg.dry_run and self.backend is None:
                self.backend = await open_backend(cfg.dest, cfg.transfer)
                stack.push_async_callback(self.backend.close)
                if cfg.retention is not None:
                    await check_object_lock(self.backend, cfg.dest)
            try:
                self.secret = await key_secret(cp, None if cfg.dry_run else self.backend,
                                               cfg.dest)
                dropped: list[str] = []
                if self.backend is not None and not cfg.dry_run:
                    adopted, dropped = await reconcile(cp, self.backend)
                    self.stats.objects_adopted += adopted
                    self.stats.intents_dropped += len(dropped)
                    if adopted or dropped:
                        log.info("after an interrupted run: %d stored objects adopted, %d "
                                 "unfinished uploads to redo", adopted, len(dropped))
                await cp.call(cp.clear, "spill")
                if cfg.retention is not None and cfg.retention.map is not None:
                    n = await cp.call(cp.load_retention, cfg.retention.map.rows())
                    log.info("retention map: %d studies", n)
                if cfg.dry_run:
                    await cp.call(cp.clear, "plan")
                if cfg.progress_file is not None:
                    writer = asyncio.create_task(keep_writing(cfg.progress_file,
                                                              self.stats.as_dict))
                    stack.push_async_callback(_stop, writer)
                await self._stream(cp, started)
                if self.backend is not None and not cfg.dry_run:
                    self.stats.uploads_aborted += await abandon(cp, self.backend, dropped)
                await self._compact(cp)
            except BaseException:
                # The run stops on an error: the report still says how far it got, but a
                # failure to write it must not hide the error that stopped the run.
                try:
                    await self._finish(cp, started)
                except Exception as exc:  # noqa: BLE001
                    log.warning("could not write the report after the error: %s", exc)
                raise
            await self._finish(cp, started)
        return self.stats

    def _sink(self, cp: Checkpoint, started: float, bar: Bar) -> Sink:
        t = self.cfg.transfer
        if self.cfg.dry_run:
            dest = self.cfg.dest
            prices = self.cfg.prices or default_table(
                dest.scheme, dest.s3.provider if dest.s3 else None, dest.endpoint_url)
            return PlanSink(cp, self.stats, bar, scheme=dest.scheme, part_size=t.part_size,
                            classes=self._classes(), prices=prices, locks=self._locks(cp))
        assert self.backend is not None
        return StoreSink(cp, self.stats, bar, backend=self.backend, pool=self.pool,
                         secret=self.secret, concurrency=t.concurrency,
                         memory=self.cfg.memory // 2, expect=cp.counts()["plan"] > 0,
                         started=started, classes=self._classes(), locks=self._locks(cp),
                         dedup=self.cfg.dedup, compress=self.cfg.compress)

    def _classes(self) -> Classes | None:
        """Each plan's storage class by its study's age today (None: no policy given)."""
        tiers, today = self.cfg.tiers, self.today
        if not tiers:
            return None
        return lambda plan: tiers.class_for(plan.members[0].about.study_date, today)

    def _locks(self, cp: Checkpoint) -> Locks | None:
        """Each plan's retention lock (see _lock_of), counting the studies a retention map
        does not name; None: no retention asked for."""
        retention, s = self.cfg.retention, self.stats
        if retention is None:
            return None

        def lock(plan: BundlePlan) -> dict[str, str]:
            meta, unnamed = self._lock_of(cp, plan)
            if unnamed:
                if retention.years:
                    s.retention_defaulted += 1
                else:
                    s.retention_unlocked += 1
            return meta
        return lock

    def _lock_of(self, cp: Checkpoint, plan: BundlePlan) -> tuple[dict[str, str], bool]:
        """A plan's lock metadata: the years the map gives its study (by UID, else
        AccessionNumber) or --retain-years, from its StudyDate; and whether it is a study
        the map does not name."""
        retention, about = self.cfg.retention, plan.members[0].about
        if retention is None:
            return {}, False
        found = None
        if retention.map is not None:
            found = cp.retention_for(about.study_uid, about.accession)
        years, label = found or (None, "")
        meta = retention.metadata(about.study_date, self.today, years=years, label=label)
        return meta, retention.map is not None and found is None and about.status == DICOM

    async def _stream(self, cp: Checkpoint, started: float) -> None:
        cfg = self.cfg
        bar = Bar("store" if not cfg.dry_run else "plan", total_bytes=None, total_files=None,
                  enabled=cfg.progress, position=1)
        sink = self._sink(cp, started, bar)
        try:
            await self._walk(cp, sink)
            await cp.call(cp.settle_vanished)
            s = self.stats
            log.info("walk: %d files seen, %d read (%d unsorted), %d already migrated, %d "
                     "spilled, %d skipped, %d failed", s.files_seen, s.classified,
                     sum(s.unsorted.values()), s.already_migrated, s.spilled,
                     sum(s.skipped.values()), sum(s.failed.values()))
            await self._stragglers(cp, sink)
        except BaseException:
            if isinstance(sink, StoreSink):
                await sink.cancel()
            raise
        finally:
            bar.close()

    async def _walk(self, cp: Checkpoint, sink: Sink) -> None:
        """Walk, read and group the sources; plans go to the sink as studies close."""
        cfg = self.cfg
        roots = [os.fsencode(os.path.abspath(s)) for s in cfg.sources]
        opts = ReadOptions(self.secret, hold_max=cfg.hold_max, header_bytes=cfg.header_bytes,
                           dry_run=cfg.dry_run,
                           skip_migrated=cp.counts()["index"] > 0)
        grouper = Grouper(bundle_size=cfg.bundle_size, large_file=cfg.large_file,
                          memory=cfg.memory // 2)
        problems: list[Problem] = []
        bar = Bar("read", total_bytes=None, total_files=None, enabled=cfg.progress, position=0)
        # A separate counting walk gives the bars their totals (restic's way).
        counting = asyncio.create_task(count_for(roots, [bar, sink.bar], cfg.shard)) \
            if cfg.progress else None
        try:
            await self._read_and_group(cp, sink, roots, opts, grouper, problems, bar)
            # The walk is over: whatever the counting walk got to, the total is known.
            for b in (bar, sink.bar):
                b.total_files = self.stats.files_seen
        finally:
            bar.close()
            if counting is not None:
                counting.cancel()
                await asyncio.gather(counting, return_exceptions=True)
        await cp.call(cp.record_problems, problems)
        out = Closed()
        spilled = await cp.call(cp.spilled_groups, list(grouper.open))
        grouper.finish(out, spilled=spilled.__contains__)
        await self._emit(cp, sink, out)

    async def _read_and_group(self, cp: Checkpoint, sink: Sink, roots: list[bytes],
                              opts: ReadOptions, grouper: Grouper, problems: list[Problem],
                              bar: Bar) -> None:
        s = self.stats
        async for result in read_tree(roots, self.pool, opts, cp,
                                      jobs=2 * self.cfg.read_threads, shard=self.cfg.shard):
            s.files_seen += result.listed
            s.bytes_seen += result.seen_bytes
            s.already_migrated += result.migrated
            s.classified += len(result.members)
            for m in result.members:
                if m.about.reason:
                    s.unsorted[m.about.reason] += 1
            s.count_problems(result.problems)
            problems += result.problems
            out = Closed()
            grouper.enter(result.directory, out)
            for m in result.members:
                grouper.add(m, out)
            await self._emit(cp, sink, out)
            if len(problems) >= SPILL_BATCH:
                await cp.call(cp.record_problems, problems[:])
                problems.clear()
            bar.update(files=result.seen, nbytes=result.seen_bytes)
            faults.point("mid-catalogue")

    async def _emit(self, cp: Checkpoint, sink: Sink, out: Closed) -> None:
        if out.spill:
            for m in out.spill:
                m.data = None  # read again when its study is packed
            self.stats.spilled += len(out.spill)
            await cp.call(cp.spill, out.spill)
        for plan in out.plans:
            await self._put(sink, plan)

    async def _put(self, sink: Sink, plan: BundlePlan) -> None:
        if plan.kind == FILE and isinstance(sink, StoreSink) and self.cfg.dedup:
            plan = await self._copy_of_large(sink, plan)
        assign_key(self.cfg.dest, plan)
        await sink.put(plan)

    async def _copy_of_large(self, sink: StoreSink, plan: BundlePlan) -> BundlePlan:
        """A large file that is a copy of one stored (same blake3, locked as long) becomes a
        bundle of that one copy: its manifest points at the stored bytes, none are sent.
        Hashed first only when a large file of its size is stored already."""
        cp, m = sink.cp, plan.members[0]
        if not await cp.call(cp.has_large_file, m.size):
            return plan
        loop = asyncio.get_running_loop()
        digest = await loop.run_in_executor(self.pool, hash_unchanged, m.path, m.size,
                                            m.mtime_ns)
        found = await cp.call(cp.stored_content, digest) if digest else None
        need = lock_of(manifest_fields(self._lock_of(cp, plan)[0]))
        if found is None or not covers(found.lock, need):
            return plan
        m.blake3 = digest or ""
        return BundlePlan(plan.group, TAR, [m], size=m.size)

    async def _stragglers(self, cp: Checkpoint, sink: Sink) -> None:
        """Pack the spilled files by study, then those whose study changed since they were
        read (or that changed while sent), a few passes at most; what is left stays in
        the spill, reported as pending."""
        if self.cfg.dry_run:  # nothing is stored, so one pass plans every spilled file
            await self._pack_spill(cp, sink)
            await sink.drain()
            await cp.call(cp.clear, "spill")
            return
        for attempt in range(MAX_PASSES + 1):
            await sink.drain()
            if isinstance(sink, StoreSink) and sink.moved:
                moved, sink.moved = sink.moved, []
                await cp.call(cp.spill, moved)
            if attempt == MAX_PASSES or not (await cp.call(cp.counts))["spill"]:
                break
            await self._pack_spill(cp, sink)

    async def _pack_spill(self, cp: Checkpoint, sink: Sink) -> int:
        """One pass over the spill in (study, path) order; returns the plans it made.

        Files a plan could not store stay in the spill (or come back to it) for the next.
        """
        cfg = self.cfg
        after = b""
        current: BundlePlan | None = None
        handled = 0
        while batch := await cp.call(cp.spill_after, after, SPILL_BATCH):
            for _, m in batch:
                if m.size > cfg.large_file:
                    await self._put(sink, BundlePlan(m.group, FILE, [m], size=m.size))
                    handled += 1
                    continue
                if current is not None and (current.group != m.group
                                            or current.size + m.size > cfg.bundle_size):
                    await self._put(sink, current)
                    handled += 1
                    current = None
                if current is None:
                    current = BundlePlan(m.group, TAR)
                current.add(m)
            after = batch[-1][0]
        if current is not None:
            await self._put(sink, current)
            handled += 1
        return handled

    async def _compact(self, cp: Checkpoint) -> None:
        """Pack the state's pages after a run that wrote a good share of it (a tenth or
        more of its rows), so the copy's cost stays a fraction of the run's."""
        s = self.stats
        wrote = s.files_migrated if not self.cfg.dry_run else s.planned_files
        rows = (await cp.call(cp.counts))["index" if not self.cfg.dry_run else "plan"]
        if wrote >= COMPACT_MIN_ROWS and wrote * 10 >= rows:
            saved = await cp.call(cp.compact)
            log.info("state compacted: %d bytes saved", saved)

    async def _finish(self, cp: Checkpoint, started: float) -> None:
        s = self.stats
        if self.backend is not None:
            collect_backend_stats(s, self.backend)
        s.studies = await cp.call(cp.group_entries)
        s.pending_after = 0 if self.cfg.dry_run else (await cp.call(cp.counts))["spill"]
        s.not_migrated = s.pending_after + await cp.call(cp.open_problems)
        s.seconds = round(time.monotonic() - started, 3)
        if self.cfg.report_path is not None:
            await cp.call(write_report, self.cfg.report_path, cp, s, self.cfg)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def count_for(roots: list[bytes], bars: list[Bar], shard: Shard | None = None) -> None:
    """Count the files under roots (in the shard's slice), then give the bars their total."""
    walker = Walker(roots)
    n = 0
    try:
        while (got := await walker.next()) is not None:
            n += len(in_shard(got, roots, shard).files if shard is not None else got.files)
            if walker.listings % 64 == 0:
                await asyncio.sleep(0)  # listings inline on fast storage: let the run go on
    finally:
        walker.close()
    for bar in bars:
        bar.total_files = n


def collect_backend_stats(s: Stats, backend: Backend) -> None:
    """What the store's requests did: counts, retries by cause, throttling, parts resumed."""
    if isinstance(backend, Measured):
        b = backend.stats
        s.retries.update(b.retries)
        s.requests += b.requests
        s.throttle_slowdowns += b.throttle_slowdowns
        s.lowest_concurrency = b.lowest_concurrency
        s.parts_reused += b.parts_reused


async def migrate(cfg: MigrateConfig, *, backend: Backend | None = None) -> Stats:
    """Library entry point: run one migration (or dry-run) to completion."""
    return await Migration(cfg, backend=backend).run()


__all__ = ["Migration", "migrate"]
