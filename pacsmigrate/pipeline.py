"""The migrate run, orchestrated: the state bound to its store, the key secret, crash recovery,
then the catalogue and store stage (stream.py), then what an interrupted run left, compaction
and the report. Each step is a public function of its own module."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from datetime import UTC, datetime

from .backends import Backend, Measured, open_backend
from .backends.body import AUTO, sent
from .checkpoint import Checkpoint
from .commit import abandon, reconcile
from .config import MigrateConfig
from .costs import default_table
from .errors import BackendError, ConfigError, NoRoomToCompactError, first_error
from .fanout import cancelled
from .planpolicy import PlanPolicy
from .preflight import WARN, decided, preflight
from .progress import Bar, keep_reporting, keep_writing, stats_line
from .records import now_iso
from .report import outcome_of, run_record, write_report
from .sample import measure_upload, scale
from .setup import (
    agreed_slicing,
    check_object_lock,
    check_state,
    key_secret,
    record_sources,
    recorded_encryption,
)
from .sink import PlanSink, Sink, StoreSink
from .staterepair import done_with_list, take_list
from .stats import Stats
from .stream import SourceStream
from .survey import setup_requests, survey
from .tables import RUNNING

# Log lines name object keys (keyed hashes) and counts, never source paths, names or UIDs:
# paths often contain patient IDs (PatientID/StudyDate/... layouts).
log = logging.getLogger("pacsmigrate.pipeline")
stats_log = logging.getLogger("pacsmigrate.stats")  # --stats-interval lines

COMPACT_MIN_ROWS = 1000


class Migration:
    """One run of `migrate`; build with a config, then `await run()`."""

    def __init__(self, cfg: MigrateConfig, *, backend: Backend | None = None,
                 stream: type[SourceStream] = SourceStream) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.backend: Backend | None = backend
        self.secret = b""
        self.pool = ThreadPoolExecutor(max_workers=cfg.read_threads, thread_name_prefix="read")
        # Study ages and locks count from the run's day, fixed once.
        self.policy = PlanPolicy(cfg, datetime.now(UTC).date())
        self.stream = stream  # the catalogue and store stage (tests pass a subclass)
        self.started_at = now_iso()
        self._plan: PlanSink | None = None  # a dry run's sink

    async def run(self) -> Stats:
        try:
            return await self._run()
        except BaseExceptionGroup as group:
            raise first_error(group) from group

    async def _run(self) -> Stats:
        started = time.monotonic()
        cfg = self.cfg = recorded_encryption(self.cfg)  # before the store is opened with it
        async with AsyncExitStack() as stack:
            # The pre-flight probes through it (one session, one connection pool); a dry
            # run lists the store with it.
            opened = not cfg.offline and self.backend is None
            if opened:
                self.backend = await open_backend(cfg.dest, cfg.transfer)
                stack.push_async_callback(self.backend.close)
            if cfg.preflight:  # before the state directory is made or bound to the store
                await self._preflight()
                cfg = self.cfg  # with the checksum it chose (--checksum auto)
            elif opened and cfg.retention is not None and self.backend is not None:
                await check_object_lock(self.backend, cfg.dest)
            cp = Checkpoint(cfg.state_dir)
            stack.callback(cp.close)
            stack.callback(self.pool.shutdown, wait=True)
            cfg = self.cfg = check_state(cp, cfg)
            await cp.call(cp.start_run, {**run_record(cfg, self.stats, started=self.started_at,
                                                      outcome=RUNNING), "ended": None})
            if not cfg.dry_run:  # auto undecided (no pre-flight) sends MD5
                self.stats.checksum = sent(cfg.transfer.checksum)
            log.info("%s of %d source tree(s) to %s", "dry run" if cfg.dry_run
                     else "migration", len(cfg.sources), cfg.dest)
            try:
                self.secret = await key_secret(cp, self.backend, cfg.dest,
                                               write=not cfg.dry_run)
                dropped: list[str] = []
                # A dry run does not contact the store: it plans as a first run would.
                cfg = self.cfg = await agreed_slicing(
                    cp, None if cfg.dry_run else self.backend, cfg)
                if self.backend is not None and not cfg.dry_run:
                    await record_sources(self.backend, cfg.dest,
                                         [os.path.abspath(s) for s in cfg.sources])
                    adopted, files, dropped = await reconcile(cp, self.backend)
                    self.stats.objects_adopted += adopted
                    self._adopted_under(cp, adopted)
                    # Committed by this run: its record's files add up to the index.
                    self.stats.files_migrated += files
                    self.stats.files_adopted += files
                    self.stats.intents_dropped += len(dropped)
                    if adopted or dropped:
                        log.info("after an interrupted run: %d stored objects adopted, %d "
                                 "unfinished uploads to redo", adopted, len(dropped))
                if not cfg.dry_run:
                    await self._repair(cp)
                await cp.call(cp.clear, "spill")
                if cfg.retention is not None and cfg.retention.map is not None:
                    n = await cp.call(cp.load_retention, cfg.retention.map.rows())
                    log.info("retention map: %d studies", n)
                if cfg.dry_run:
                    await cp.call(cp.clear, "plan")
                    await self._survey(cp)
                if cfg.stats_interval > 0:
                    reporter = asyncio.create_task(keep_reporting(
                        lambda: self._stats_line(started), cfg.stats_interval, stats_log))
                    stack.push_async_callback(cancelled, reporter)
                if cfg.progress_file is not None:
                    writer = asyncio.create_task(keep_writing(cfg.progress_file,
                                                              self.stats.as_dict))
                    stack.push_async_callback(cancelled, writer)
                await self._stream(cp, started)
                # The walk found the adopted files in the index, as if an earlier run had
                # committed them: they are this run's (exact unless one of them changed or
                # vanished between the stop and this run).
                s = self.stats
                s.already_migrated -= min(s.files_adopted, s.already_migrated)
                if cfg.sample:
                    await self._estimate()
                if self.backend is not None and not cfg.dry_run:
                    aborted = await abandon(cp, self.backend, dropped)
                    self.stats.uploads_aborted += aborted
                await self._compact(cp)
            except BaseException as stop:
                # The run stops on an error: the report still says how far it got, but a
                # failure to write it must not hide the error that stopped the run.
                try:
                    await self._finish(cp, started, outcome=outcome_of(stop))
                except Exception as exc:  # noqa: BLE001
                    log.warning("could not write the report after the error: %s", exc)
                raise
            await self._finish(cp, started, outcome="completed")
        return self.stats

    def _adopted_under(self, cp: Checkpoint, adopted: int) -> None:
        """Objects adopted from the run before keep the class and lock that run asked for:
        said when this run asks otherwise (they are not stored again for it)."""
        before = next((r.get("policy") for r in reversed(cp.runs()[:-1])
                       if not r.get("dry_run")), None)
        if adopted and before is not None and before != self.cfg.asked():
            self.stats.adopted_other_policy += adopted
            log.info("%d objects adopted from the interrupted run keep the storage class and "
                     "lock it asked for, not this run's (said in the summary)", adopted)

    async def _repair(self, cp: Checkpoint) -> None:
        """What a verify found damaged (STATE/repair.jsonl) is forgotten, so this run
        stores those files again, into new objects (staterepair.py)."""
        damaged = take_list(cp.state_dir)
        if damaged is None:
            return
        done = await cp.call(cp.forget, damaged)
        done_with_list(cp.state_dir)
        self.stats.repaired_files += done.dropped
        self.stats.damaged_objects += done.objects
        self.stats.damaged_source_gone += len(done.source_gone)
        log.info("repair: %d files found damaged by verify to be stored again; %d damaged "
                 "objects no longer indexed; %d damaged files whose source is gone kept",
                 done.dropped, len(done.objects), len(done.source_gone))

    async def _survey(self, cp: Checkpoint) -> None:
        """A dry run: what the store holds already (survey.py), and the requests a real run
        makes besides its objects'."""
        cfg, s = self.cfg, self.stats
        held = None
        if self.backend is not None:
            held = await survey(self.backend, cfg.dest, cp,
                                [os.path.abspath(p) for p in cfg.sources])
            s.store = held.as_dict()
            s.store_lines = held.lines(cfg.dest)
        s.setup_requests = setup_requests(held, classes=len(self._classes()),
                                          crc32_probe=self.cfg.transfer.checksum == AUTO)

    async def _estimate(self) -> None:
        """A sampled dry run: the whole tree's estimate from its slice (sample.py)."""
        s, t = self.stats, self.cfg.transfer
        rates, unmeasured = None, "--offline"
        if self.backend is not None and s.files_seen:
            size = s.planned_bytes // s.planned_objects if s.planned_objects else 0
            try:
                rates = await measure_upload(self.backend, self.cfg.dest,
                                             concurrency=t.concurrency,
                                             size=min(size, t.part_size))
            except BackendError as exc:  # list-only credentials, say: the estimate stands
                unmeasured = f"the store refused a probe object: {exc}"
        sink = self._plan
        est = scale(s, total_files=s.counted_files, read_seconds=s.read_seconds,
                    setup=s.setup_requests, rates=rates,
                    tally=sink.tally if sink is not None else None,
                    prices=sink.prices if sink is not None else None, unmeasured=unmeasured)
        s.estimate, s.estimate_lines = est.as_dict(), est.lines()

    def _classes(self) -> tuple[str, ...]:
        """The storage classes the pre-flight checks."""
        return tuple(dict.fromkeys(self.cfg.tiers.classes())) if self.cfg.tiers else ()

    async def _preflight(self) -> None:
        """Sources, state and store checked (preflight.py); the first failure stops the run
        in one line. Logged by subject: a source line would name a source path."""
        report = await preflight(self.cfg, offline=self.cfg.offline, backend=self.backend)
        self.stats.requests += report.requests  # made on the pre-flight's own short policy
        self.cfg = decided(self.cfg, report)
        if self.backend is not None and hasattr(self.backend, "transfer"):
            self.backend.transfer = self.cfg.transfer  # what its PUTs are checked with
        try:
            report.raise_if_failed()
        except BackendError as exc:
            if not self.cfg.dry_run:
                raise
            raise ConfigError(f"{exc} (to plan without the store: --dry-run --offline)"
                              ) from exc
        for c in report.checks:
            if c.verdict == WARN:
                log.warning("pre-flight: %s", c if c.subject != "source" else c.subject)
        log.info("pre-flight passed: %s", ", ".join(sorted({c.subject for c in report.checks})))

    def _retried(self) -> str:
        """The store bar's note: requests retried so far (network trouble shows at once)."""
        b = self.backend.stats if isinstance(self.backend, Measured) else None
        n = sum(b.retries.values()) if b is not None else 0
        return f", {n:,} requests retried" if n else ""

    def _stats_line(self, started: float) -> str:
        b = self.backend.stats if isinstance(self.backend, Measured) else None
        return stats_line(self.stats, time.monotonic() - started,
                          sum(b.retries.values()) if b else 0)

    def _sink(self, cp: Checkpoint, started: float, bar: Bar) -> Sink:
        t = self.cfg.transfer
        if self.cfg.dry_run:
            dest = self.cfg.dest
            prices = self.cfg.prices or default_table(
                dest.scheme, dest.s3.provider if dest.s3 else None, dest.endpoint_url)
            self._plan = PlanSink(cp, self.stats, bar, scheme=dest.scheme,
                                  part_size=t.part_size, classes=self.policy.classes(),
                                  prices=prices, locks=self.policy.locks(cp, self.stats),
                                  dedup=self.cfg.dedup)
            return self._plan
        assert self.backend is not None
        return StoreSink(cp, self.stats, bar, backend=self.backend, pool=self.pool,
                         secret=self.secret, concurrency=t.concurrency,
                         memory=self.cfg.memory // 2, expect=cp.counts()["plan"] > 0,
                         started=started, classes=self.policy.classes(),
                         locks=self.policy.locks(cp, self.stats),
                         dedup=self.cfg.dedup, compress=self.cfg.compress)

    async def _stream(self, cp: Checkpoint, started: float) -> None:
        """The catalogue and store stage (stream.py) into this run's sink."""
        cfg = self.cfg
        bar = Bar("store" if not cfg.dry_run else "plan", total_bytes=None, total_files=None,
                  enabled=cfg.progress, position=1, note=self._retried)
        try:
            sink = self._sink(cp, started, bar)
            await self.stream(cfg, cp, sink, stats=self.stats, pool=self.pool,
                              secret=self.secret, policy=self.policy).run()
        finally:
            bar.close()

    async def _compact(self, cp: Checkpoint) -> None:
        """Pack the state's pages after a run that wrote a good share of it (a tenth or
        more of its rows), so the copy's cost stays a fraction of the run's; it merges the
        SOP log (soplog.py) in key order on the way. Without a compaction, the log's rows
        are put into the SOP table in sorted batches."""
        s = self.stats
        wrote = s.files_migrated if not self.cfg.dry_run else s.planned_files
        rows = (await cp.call(cp.counts))["index" if not self.cfg.dry_run else "plan"]
        if not self.cfg.dry_run:  # what killed runs left in the log counts too
            wrote = max(wrote, await cp.call(cp.sop_log_rows))
        if wrote >= COMPACT_MIN_ROWS and wrote * 10 >= rows:
            await self._compact_now(cp, rows)
        if not self.cfg.dry_run:
            await cp.call(cp.merge_sop_log)  # none left after a compaction

    async def _compact_now(self, cp: Checkpoint, rows: int) -> None:
        # Minutes at 100M files, after the last object: said first (the stats lines
        # stand still meanwhile).
        stats_log.info("compacting the state: %d rows rewritten in key order, %d MB of "
                       "pages; safe to stop (the state stays as it was)", rows,
                       (await cp.call(cp.in_use)) >> 20)
        try:
            saved = await cp.call(cp.compact)
        except NoRoomToCompactError as exc:
            # Only its pages are less full: every row is there, the run is done.
            log.warning("state not compacted (%s); a later run that writes a tenth of "
                        "it tries again", exc)
            return
        log.info("state compacted: %d bytes saved", saved)

    async def _finish(self, cp: Checkpoint, started: float, *, outcome: str) -> None:
        """The run's totals, its record in the state's history, then the report."""
        s = self.stats
        if self.backend is not None:
            collect_backend_stats(s, self.backend)
        s.studies = await cp.call(cp.group_entries)
        s.pending_after = 0 if self.cfg.dry_run else (await cp.call(cp.counts))["spill"]
        s.not_migrated = s.pending_after + await cp.call(cp.open_problems)
        s.seconds = round(time.monotonic() - started, 3)
        await cp.call(cp.record_run, run_record(self.cfg, s, started=self.started_at,
                                                outcome=outcome))
        if self.cfg.report_path is not None:
            await cp.call(write_report, self.cfg.report_path, cp, s, self.cfg)


def collect_backend_stats(s: Stats, backend: Backend) -> None:
    """What the store's requests did: counts, retries by cause, throttling, parts resumed."""
    if isinstance(backend, Measured):
        b = backend.stats
        s.retries.update(b.retries)
        s.requests += b.requests
        s.throttle_slowdowns += b.throttle_slowdowns
        s.lowest_concurrency = b.lowest_concurrency
        s.uploads_resumed += b.uploads_resumed
        s.parts_reused += b.parts_reused
        s.uploads_aborted += b.uploads_restarted
        s.uploads_restarted += b.uploads_restarted


async def migrate(cfg: MigrateConfig, *, backend: Backend | None = None) -> Stats:
    """Library entry point: run one migration (or dry-run) to completion."""
    return await Migration(cfg, backend=backend).run()


__all__ = ["Migration", "migrate"]
