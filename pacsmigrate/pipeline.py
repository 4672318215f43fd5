"""The migrate run: catalogue the sources, then pack, upload and commit study by study."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path

from . import faults, keys
from .backends import Backend, Measured, open_backend
from .backends.base import one_chunk
from .checkpoint import Checkpoint
from .classify import classify
from .commit import Committer, abandon, reconcile
from .config import MigrateConfig
from .errors import ConfigError, ObjectExistsError, StateError, first_error
from .group import plans, requests_for
from .progress import Bar
from .records import BundlePlan, Catalogued, FileEntry, Problem, now_iso
from .report import write_report
from .scan import scan
from .stats import Stats
from .upload import upload

# Log lines name object keys (keyed hashes) and counts, never source paths, names or UIDs:
# paths often contain patient IDs (PatientID/StudyDate/... layouts).
log = logging.getLogger("pacsmigrate.pipeline")

MAX_PASSES = 3
IN_FLIGHT_BATCHES = 4


class Migration:
    """One run of `migrate`; build with a config, then `await run()`."""

    def __init__(self, cfg: MigrateConfig, *, backend: Backend | None = None) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.backend: Backend | None = backend
        self.cp: Checkpoint | None = None
        self.secret = b""
        self._last_group = ""
        self.reader = ThreadPoolExecutor(max_workers=cfg.read_threads,
                                         thread_name_prefix="read")

    async def run(self) -> Stats:
        try:
            return await self._run()
        except BaseExceptionGroup as group:
            raise first_error(group) from group

    async def _run(self) -> Stats:
        started = time.monotonic()
        async with AsyncExitStack() as stack:
            self.cp = cp = Checkpoint(self.cfg.state_dir)
            stack.callback(cp.close)
            stack.callback(self.reader.shutdown, wait=True)
            self._check_state(cp)
            log.info("%s of %d source tree(s) to %s", "dry run" if self.cfg.dry_run
                     else "migration", len(self.cfg.sources), self.cfg.dest)
            if not self.cfg.dry_run and self.backend is None:
                self.backend = await open_backend(self.cfg.dest, self.cfg.transfer)
                stack.push_async_callback(self.backend.close)
            try:
                self.secret = await self._secret(cp)
                dropped: list[str] = []
                if self.backend is not None and not self.cfg.dry_run:
                    adopted, dropped = await reconcile(cp, self.backend)
                    self.stats.objects_adopted += adopted
                    self.stats.intents_dropped += len(dropped)
                    if adopted or dropped:
                        log.info("after an interrupted run: %d stored objects adopted, %d "
                                 "unfinished uploads to redo", adopted, len(dropped))
                await self._catalogue(cp)
                await cp.call(cp.settle_vanished)
                s = self.stats
                log.info("catalogue: %d files seen, %d classified (%d unsorted), %d already "
                         "migrated, %d skipped, %d failed", s.files_seen, s.classified,
                         sum(s.unsorted.values()), s.already_migrated, sum(s.skipped.values()),
                         sum(s.failed.values()))
                if self.cfg.dry_run:
                    await self._plan_only(cp)
                else:
                    await self._store(cp)
                    assert self.backend is not None
                    self.stats.uploads_aborted += await abandon(cp, self.backend, dropped)
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

    async def _finish(self, cp: Checkpoint, started: float) -> None:
        if self.backend is not None:
            self._collect_backend_stats(self.backend)
        self.stats.pending_after = (await cp.call(cp.pending_totals))[0]
        self.stats.not_migrated = self.stats.pending_after * (not self.cfg.dry_run) + (
            await cp.call(cp.open_problems))
        self.stats.seconds = round(time.monotonic() - started, 3)
        if self.cfg.report_path is not None:
            await cp.call(write_report, self.cfg.report_path, cp, self.stats, self.cfg)

    def _collect_backend_stats(self, backend: Backend) -> None:
        if isinstance(backend, Measured):
            b = backend.stats
            self.stats.retries.update(b.retries)
            self.stats.requests += b.requests
            self.stats.throttle_slowdowns += b.throttle_slowdowns
            self.stats.lowest_concurrency = b.lowest_concurrency
            self.stats.parts_reused += b.parts_reused

    # -- state ------------------------------------------------------------------------
    def _check_state(self, cp: Checkpoint) -> None:
        dest = str(self.cfg.dest)
        known = cp.get_meta("config")
        if known is None:
            cp.put_meta("config", {"dest": dest, "endpoint_url": self.cfg.dest.endpoint_url,
                                   "sources": [os.path.abspath(s) for s in self.cfg.sources],
                                   "created": now_iso()})
        elif known["dest"] != dest:
            raise ConfigError(f"state directory {self.cfg.state_dir} belongs to a migration "
                              f"to {known['dest']}, not {dest}; use another --state")
        # Read-side commands (verify, get, restore) reach the store the way this run did.
        ca = self.cfg.transfer.ca_bundle
        cp.put_meta("ca_bundle", str(Path(ca).resolve()) if ca else None)

    async def _secret(self, cp: Checkpoint) -> bytes:
        """The key secret: the store's descriptor wins, the state remembers it.

        Kept in the store so any machine (and `index rebuild`) derives the same keys.
        """
        mine = cp.get_meta("key_secret")
        if self.backend is None or self.cfg.dry_run:
            if mine is None:
                mine = keys.new_secret().hex()
                cp.put_meta("key_secret", mine)
            return bytes.fromhex(mine)
        name = self.cfg.dest.key(keys.DESCRIPTOR)
        theirs = await self._read_descriptor(name)
        if theirs is None:
            secret = mine or keys.new_secret().hex()
            doc = {"format": "pacsmigrate.store/1", "key_secret": secret, "created": now_iso()}
            try:
                await self.backend.save(name, one_chunk(json.dumps(doc).encode()))
            except ObjectExistsError:
                theirs = await self._read_descriptor(name)
            else:
                theirs = secret
        assert theirs is not None
        if mine != theirs:
            if cp.counts()["objects"]:
                raise StateError("the store's key secret differs from this state's; the "
                                 "state directory belongs to another store")
            await cp.call(cp.reset_catalogue)  # planned with another secret: plan again
            cp.put_meta("key_secret", theirs)
        return bytes.fromhex(theirs)

    async def _read_descriptor(self, name: str) -> str | None:
        assert self.backend is not None
        if await self.backend.stat(name) is None:
            return None
        doc = json.loads(await self.backend.load(name))
        return str(doc["key_secret"])

    # -- phase 1: catalogue -----------------------------------------------------------
    async def _catalogue(self, cp: Checkpoint) -> None:
        roots = [os.fsencode(os.path.abspath(s)) for s in self.cfg.sources]
        bar = Bar("catalogue", total_bytes=None, total_files=None, enabled=self.cfg.progress)
        slots = asyncio.Semaphore(IN_FLIGHT_BATCHES)
        loop = asyncio.get_running_loop()

        async def handle(batch: list[FileEntry | Problem]) -> None:
            try:
                entries = [e for e in batch if isinstance(e, FileEntry)]
                problems = [p for p in batch if isinstance(p, Problem)]
                todo, done, known = await cp.call(cp.triage, entries)
                results = await asyncio.gather(*(
                    loop.run_in_executor(self.reader, _classify, e, self.secret,
                                         self.cfg.dry_run) for e in todo))
                records = [r for r in results if isinstance(r, Catalogued)]
                problems += [r for r in results if isinstance(r, Problem)]
                await cp.call(cp.catalogue, records, problems)
                faults.point("mid-catalogue")
                s = self.stats
                s.files_seen += len(entries)
                s.bytes_seen += sum(e.size for e in entries)
                s.already_migrated += done
                s.already_catalogued += known
                s.classified += len(records)
                for r in records:
                    if r.reason:
                        s.unsorted[r.reason] += 1
                self._count_problems(problems)
                bar.update(files=len(entries), nbytes=sum(e.size for e in todo))
            finally:
                slots.release()

        try:
            async with asyncio.TaskGroup() as tg:
                async for batch in scan(roots, threads=self.cfg.scan_threads):
                    await slots.acquire()
                    tg.create_task(handle(batch))
        finally:
            bar.close()

    def _count_problems(self, problems: list[Problem]) -> None:
        for p in problems:
            log.debug("not stored: %s", p.reason)
            (self.stats.skipped if p.final else self.stats.failed)[p.reason] += 1

    # -- phase 2: pack, upload, commit ------------------------------------------------
    async def _plan_only(self, cp: Checkpoint) -> None:
        t = self.cfg.transfer
        async for plan in plans(cp, self.cfg.dest, bundle_size=self.cfg.bundle_size,
                                large_file=self.cfg.large_file):
            self._count_plan(plan)
            self.stats.planned_requests += requests_for(
                plan, threshold=t.multipart_threshold, part_size=t.part_size)

    def _count_plan(self, plan: BundlePlan) -> None:
        """Plans arrive in group order, so a new study is a change of group (no set kept)."""
        s = self.stats
        s.planned_objects += 1
        s.planned_files += len(plan.members)
        s.planned_bytes += plan.size
        if plan.group != self._last_group and plan.members[0].status == "dicom":
            s.studies += 1
        self._last_group = plan.group

    async def _store(self, cp: Checkpoint) -> None:
        files, size = await cp.call(cp.pending_totals)
        bar = Bar("upload", total_bytes=size, total_files=files, enabled=self.cfg.progress)
        try:
            for _ in range(MAX_PASSES):
                if not await self._store_pass(cp, bar):
                    break
        finally:
            bar.close()

    async def _store_pass(self, cp: Checkpoint, bar: Bar) -> int:
        """One pass over the catalogue; returns how many plans it handled."""
        assert self.backend is not None
        width = self.cfg.transfer.concurrency
        queue: asyncio.Queue[BundlePlan | None] = asyncio.Queue(width)
        committer = Committer(cp)
        handled = 0

        async def worker() -> None:
            while (plan := await queue.get()) is not None:
                await self._store_one(cp, committer, plan, bar)

        async def release(batch: list[BundlePlan]) -> None:
            # Write-ahead, one transaction per batch, before any byte of them is sent.
            await cp.call(cp.put_intents, batch)
            for plan in batch:
                faults.point("after-intent")
                await queue.put(plan)

        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(worker()) for _ in range(width)]
            batch: list[BundlePlan] = []
            async for plan in plans(cp, self.cfg.dest, bundle_size=self.cfg.bundle_size,
                                    large_file=self.cfg.large_file):
                self._count_plan(plan)
                batch.append(plan)
                handled += 1
                if len(batch) >= width:
                    await release(batch)
                    batch = []
            await release(batch)
            for _ in workers:
                await queue.put(None)
        self.stats.commit_transactions += committer.transactions
        return handled

    async def _store_one(self, cp: Checkpoint, committer: Committer, plan: BundlePlan,
                         bar: Bar) -> None:
        assert self.backend is not None
        stored, result = await upload(plan, self.backend, self.reader, secret=self.secret)
        s = self.stats
        if stored is None:
            await cp.call(cp.drop_intent, plan.key)
            log.info("nothing stored for %s: its files moved, vanished or changed", plan.key)
        else:
            n = await committer.commit(stored)
            faults.point("after-commit")
            s.files_migrated += n
            log.info("%s %s: %d files, %d bytes", "adopted" if stored.adopted else "stored",
                     plan.key, n, stored.info.size)
            if stored.adopted:
                s.objects_adopted += 1
            else:
                s.objects_uploaded += 1
                s.bundles_uploaded += plan.kind == "tar"
                s.bytes_uploaded += stored.info.size
        s.reread_changed += result.reread
        s.reread_bytes += result.reread_bytes
        s.moved_study += len(result.moved)
        s.dry_run_mismatch += len(result.dry_run_mismatch)
        self._count_problems(result.problems)
        if result.moved or result.problems:
            await cp.call(cp.catalogue, result.moved, result.problems)
        bar.update(files=len(plan.members), nbytes=plan.size)


def _classify(entry: FileEntry, secret: bytes, hash_all: bool) -> Catalogued | Problem:
    return classify(entry, secret=secret, hash_all=hash_all)


async def migrate(cfg: MigrateConfig, *, backend: Backend | None = None) -> Stats:
    """Library entry point: run one migration (or dry-run) to completion."""
    return await Migration(cfg, backend=backend).run()


__all__ = ["Migration", "migrate"]
