"""Verify a migration: the store still holds what was committed, and the sources still match."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import sqlite3
import stat
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, fields
from itertools import islice
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, TypeVar

import blake3

from .access import Opened
from .backends.base import ObjectInfo
from .checkpoint import Checkpoint
from .config import MiB
from .errors import (
    BackendError,
    ConfigError,
    ObjectNotFoundError,
    PermanentBackendError,
    StateError,
    first_error,
)
from .keys import sidecar_key
from .paths import display, path_fields
from .progress import Bar
from .records import FileEntry, Problem, now_iso
from .scan import scan
from .source import open_source

T = TypeVar("T")

# What a finding says. All but WARNINGS make verify fail (exit status 1).
OBJECT_MISSING = "object missing"
OBJECT_SIZE = "object size differs"
OBJECT_CHECKSUM = "object checksum differs"
MANIFEST_MISSING = "manifest missing"
UNCOMMITTED_OBJECT = "index names an uncommitted object"
MEMBER_ALTERED = "member altered"
MEMBER_UNREADABLE = "member unreadable"
SOURCE_CHANGED = "source changed"
SOURCE_UNREADABLE = "source unreadable"
SOURCE_NOT_INDEXED = "source not in index"
SOURCE_GONE = "source gone"        # the stored copy is the only one left: safe, but say so
SOURCE_TOUCHED = "source touched"  # mtime moved, bytes identical to the stored copy
WARNINGS = frozenset({SOURCE_GONE, SOURCE_TOUCHED})

_EMPTY_BLAKE3 = blake3.blake3(b"").hexdigest()
_HASH_CHUNK = 1 << 20
_BATCH = 2000
# Objects in the checkpoint up to which one LIST of the whole prefix is held in memory;
# above it, one LIST per first-level (then second-level) hashed prefix keeps memory flat.
_ONE_LISTING = 50_000
_SHARD_LEVEL_1 = 5_000_000


@dataclass(frozen=True)
class VerifyConfig:
    """How hard verify pushes the store and the NAS (after s3transfer's TransferConfig)."""

    concurrency: int = 8           # objects (and LISTs) in flight
    read_threads: int = 8          # source files re-hashed at once
    scan_threads: int = 16         # directories listed at once by the source walk
    chunk: int = 16 * MiB          # the largest range GET; bounds memory per object in flight
    max_gap: int = 1 * MiB         # members closer than this are read in one range
    keep_findings: int = 1000      # findings kept in the result; the report gets them all
    work_dir: Path | None = None   # where --deep sorts rows by object (default: the state dir)
    use_list: bool = True          # False: HEAD every object (credentials without ListBucket)

    def __post_init__(self) -> None:
        for name in ("concurrency", "read_threads", "scan_threads", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"verify {name} must be at least 1")
        if self.max_gap < 0 or self.keep_findings < 0:
            raise ConfigError("verify max_gap and keep_findings must not be negative")


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that is not as the checkpoint recorded it, named by key and/or path."""

    kind: str
    key: str = ""
    path: bytes | None = None
    detail: str = ""

    @property
    def warning(self) -> bool:
        return self.kind in WARNINGS

    def to_json(self) -> dict[str, Any]:
        where = path_fields(self.path) if self.path is not None else {
            "source_path": "", "source_path_b64": ""}
        return {"kind": self.kind, "severity": "warning" if self.warning else "error",
                "key": self.key, **where, "detail": self.detail}

    def __str__(self) -> str:
        names = " ".join(x for x in (self.key, display(self.path or b"")) if x)
        return f"{self.kind}: {names}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Counts:
    """What verify looked at."""

    objects: int = 0             # data objects in the checkpoint, compared with the store
    manifests: int = 0           # their sidecar manifests, checked present
    listed: int = 0              # of those, answered by LIST (no HEAD needed)
    heads: int = 0               # HEAD requests: LIST lacked the key or its ETag
    rows: int = 0                # index rows (source files migrated)
    members_selected: int = 0    # rows chosen for --deep (all, or the --sample)
    members_checked: int = 0     # read back and hashed
    members_unverified: int = 0  # not read: their object is missing or unreadable
    range_requests: int = 0
    bytes_read: int = 0
    sources_selected: int = 0    # rows chosen for --source
    sources_checked: int = 0     # stat'ed (and hashed when the size matched)
    sources_bytes: int = 0       # source bytes hashed
    sources_walked: int = 0      # regular files the walk of the source roots found


@dataclass(frozen=True)
class VerifyResult:
    """Counts and findings of one verify; `ok` when no finding is an error."""

    counts: Counts
    errors: int
    warnings: int
    by_kind: Mapping[str, int]
    findings: tuple[Finding, ...]  # the first VerifyConfig.keep_findings, in order found
    seconds: float

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def totals(self) -> dict[str, Any]:
        return {**{f.name: getattr(self.counts, f.name) for f in fields(Counts)},
                "errors": self.errors, "warnings": self.warnings,
                "by_kind": dict(self.by_kind), "seconds": self.seconds}


class _Findings:
    """Counts every finding, keeps the first few, spools all of them for the report."""

    def __init__(self, *, keep: int, spool: IO[str] | None) -> None:
        self.kept: list[Finding] = []
        self.by_kind: Counter[str] = Counter()
        self.errors = self.warnings = 0
        self._keep = keep
        self._spool = spool

    def add(self, f: Finding) -> None:
        self.by_kind[f.kind] += 1
        if f.warning:
            self.warnings += 1
        else:
            self.errors += 1
        if len(self.kept) < self._keep:
            self.kept.append(f)
        if self._spool is not None:
            self._spool.write(json.dumps(f.to_json(), ensure_ascii=True) + "\n")


class _Sampler:
    """Exactly ceil(percent% of total) rows, chosen as they stream past (Knuth's Algorithm S).

    The same seed over the same index chooses the same rows, so --deep and --source check
    the same files, and a re-run with the same seed repeats the check.
    """

    def __init__(self, total: int, percent: float | None, seed: int) -> None:
        self.every = percent is None
        self.left = total
        self.need = total if percent is None else math.ceil(total * percent / 100)
        self.rng = random.Random(seed)

    def take(self) -> bool:
        if self.every:
            return True
        if self.left <= 0 or self.need <= 0:
            return False
        picked = self.rng.random() * self.left < self.need
        self.left -= 1
        self.need -= picked
        return picked


@dataclass(frozen=True, slots=True)
class _Member:
    offset: int
    length: int
    blake3: str
    path: bytes

    @property
    def end(self) -> int:
        return self.offset + self.length


class _ByObject:
    """The --deep rows, sorted by (object, offset) in an on-disk SQLite table.

    The index is in path order and a study's files are scattered over it; grouping rows by
    object in RAM would not scale to 100M rows, so SQLite sorts them on disk.
    """

    def __init__(self, directory: Path | None) -> None:
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="pacsmigrate-verify-", dir=directory))
        except OSError:
            self.dir = Path(tempfile.mkdtemp(prefix="pacsmigrate-verify-"))
        try:
            self.db = sqlite3.connect(self.dir / "rows.sqlite", isolation_level=None)
            for sql in (
                "PRAGMA journal_mode=OFF", "PRAGMA synchronous=OFF",
                "PRAGMA cache_size=-65536",
                ("CREATE TABLE rows (key TEXT, offset INTEGER, length INTEGER, blake3 TEXT, "
                 "path BLOB, PRIMARY KEY (key, offset, path)) WITHOUT ROWID"),
                "CREATE TABLE missing (key TEXT PRIMARY KEY) WITHOUT ROWID",
            ):
                self.db.execute(sql)
        except sqlite3.Error as exc:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise StateError(f"cannot create verify workspace in {self.dir}: {exc}") from exc

    def add(self, rows: list[dict[str, Any]]) -> None:
        self._write("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?)",
                    [(r["key"], int(r["offset"]), int(r["length"]), r["blake3"],
                      bytes.fromhex(r["path_hex"])) for r in rows])

    def mark_missing(self, key: str) -> None:
        self._write("INSERT OR IGNORE INTO missing VALUES (?)", [(key,)])

    def _write(self, sql: str, values: list[tuple[Any, ...]]) -> None:
        try:
            self.db.execute("BEGIN")
            self.db.executemany(sql, values)
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateError(f"verify workspace in {self.dir}: {exc}") from exc

    def is_missing(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM missing WHERE key = ?", (key,)).fetchone() is not None

    def objects(self) -> Iterator[tuple[str, list[_Member]]]:
        cur = self.db.execute("SELECT key, offset, length, blake3, path FROM rows "
                              "ORDER BY key, offset, path")
        key: str | None = None
        members: list[_Member] = []
        while batch := cur.fetchmany(1000):
            for k, offset, length, digest, path in batch:
                if k != key:
                    if key is not None:
                        yield key, members
                    key, members = k, []
                members.append(_Member(offset, length, digest, path))
        if key is not None:
            yield key, members

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _take(it: Iterator[T], n: int) -> list[T]:
    return list(islice(it, n))


async def _db_batches(cp: Checkpoint, name: str) -> AsyncIterator[list[tuple[bytes, Any]]]:
    """A checkpoint database in short batches, read on the checkpoint's own thread."""
    it = cp.iter_db(name, batch=_BATCH)
    while batch := await cp.call(_take, it, _BATCH):
        yield batch


async def _workers(items: AsyncIterator[T], work: Callable[[T], Awaitable[None]], n: int
                   ) -> None:
    """n workers over a bounded queue: the producer waits while all of them are busy."""
    queue: asyncio.Queue[tuple[T] | None] = asyncio.Queue(n)

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            await work(item[0])

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(worker())
            async for item in items:
                await queue.put((item,))
            for _ in range(n):  # on failure the task group cancels the workers instead
                await queue.put(None)
    except BaseExceptionGroup as group:
        # Callers (and the CLI's error handling) see our error, not the task group's wrapper.
        raise first_error(group) from None


def _etag(text: str) -> str:
    return text.strip().strip('"').lower()


def _shard(base: str, key: str, depth: int) -> str:
    """The LIST prefix of key: base plus its first `depth` hashed levels."""
    if depth == 0 or not key.startswith(base):
        return base
    levels = key[len(base):].split("/")[:-1][:depth]
    return base + "".join(level + "/" for level in levels)


def _not_indexed(cp: Checkpoint, paths: list[bytes]) -> list[bytes]:
    return [p for p in paths if cp.index_row(p) is None]


def _source_state(path: bytes, size: int, mtime_ns: int, digest: str
                  ) -> tuple[Finding | None, int]:
    """Re-stat a migrated source file, and re-hash it when its size still matches."""
    try:
        fd = open_source(path)
    except FileNotFoundError:
        return Finding(SOURCE_GONE, path=path, detail="deleted after migration"), 0
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: replaced by a symlink
            return Finding(SOURCE_CHANGED, path=path, detail="now a symlink"), 0
        return Finding(SOURCE_UNREADABLE, path=path, detail=exc.strerror or str(exc)), 0
    hashed = 0
    try:
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return Finding(SOURCE_CHANGED, path=path, detail="not a regular file"), 0
            if st.st_size != size:
                return Finding(SOURCE_CHANGED, path=path,
                               detail=f"size {size} -> {st.st_size}"), 0
            h = blake3.blake3()
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
                hashed += len(chunk)
    except OSError as exc:
        return Finding(SOURCE_UNREADABLE, path=path, detail=exc.strerror or str(exc)), hashed
    if h.hexdigest() != digest:
        return Finding(SOURCE_CHANGED, path=path, detail="content differs (blake3)"), hashed
    if st.st_mtime_ns != mtime_ns:
        return Finding(SOURCE_TOUCHED, path=path,
                       detail="mtime changed, bytes identical to the stored copy"), hashed
    return None, hashed


class _RunHash:
    """Incremental blake3 of one run's members, fed its bytes in order, chunk by chunk."""

    def __init__(self, run: list[_Member]) -> None:
        self.run = run
        self.hashers: list[Any] = [None] * len(run)
        self.finished = [False] * len(run)
        self.first = 0  # members before it are finished: later chunks skip them

    def feed(self, pos: int, data: bytes) -> list[tuple[_Member, str]]:
        """Hash the slices of data (which starts at pos) that belong to members; return
        the members now complete with their digests. Runs in a hashing thread."""
        view = memoryview(data)
        end = pos + len(data)
        done = []
        run, i = self.run, self.first
        while i < len(run) and run[i].offset < end:
            m = run[i]
            if not self.finished[i] and m.end > pos:
                h = self.hashers[i] or blake3.blake3()
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

    def unfinished(self) -> list[_Member]:
        return [m for m, f in zip(self.run, self.finished) if not f]


def _runs(members: list[_Member], max_gap: int) -> list[list[_Member]]:
    """Members (sorted by offset) grouped into runs close enough to read as one range."""
    runs: list[list[_Member]] = []
    end = 0
    for m in members:
        if runs and m.offset - end <= max_gap:
            runs[-1].append(m)
        else:
            runs.append([m])
        end = max(end, m.end)
    return runs


class _Verify:
    """One verify run over an opened migration; the counters fill as it goes."""

    def __init__(self, opened: Opened, cfg: VerifyConfig, findings: _Findings, *,
                 progress: bool) -> None:
        self.cp = opened.cp
        self.dest = opened.dest
        self.backend = opened.backend
        self.cfg = cfg
        self.findings = findings
        self.progress = progress
        self.n: Counter[str] = Counter()
        self.by_object: _ByObject | None = None
        self.use_list = cfg.use_list

    def counts(self) -> Counts:
        return Counts(**self.n)

    # -- the store: every committed object and its sidecar, by LIST ----------------------
    async def store(self) -> None:
        total = (await self.cp.call(self.cp.counts))["objects"]
        depth = 0 if total <= _ONE_LISTING else 1 if total <= _SHARD_LEVEL_1 else 2
        base = self.dest.prefix + "/" if self.dest.prefix else ""
        bar = Bar("verify objects", total_bytes=None, total_files=total, enabled=self.progress)

        async def shards() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
            prefix: str | None = None
            records: list[dict[str, Any]] = []
            async for batch in _db_batches(self.cp, "objects"):
                for _, rec in batch:
                    s = _shard(base, rec["key"], depth)
                    if s != prefix and records:
                        yield prefix or "", records
                        records = []
                    prefix = s
                    records.append(rec)
            if records:
                yield prefix or "", records

        async def check(shard: tuple[str, list[dict[str, Any]]]) -> None:
            await self._shard(*shard, bar)

        try:
            await _workers(shards(), check, max(1, min(4, self.cfg.concurrency)))
        finally:
            bar.close()

    async def _shard(self, prefix: str, records: list[dict[str, Any]], bar: Bar) -> None:
        wanted = {r["key"] for r in records} | {sidecar_key(r["key"]) for r in records}
        listed: dict[str, ObjectInfo] = {}
        if self.use_list:
            async for info in self.backend.list(prefix):
                if info.key in wanted:
                    listed[info.key] = info

        async def one(rec: dict[str, Any]) -> None:
            await self._object(rec, listed)
            bar.update(files=1, nbytes=int(rec["size"]))

        async def items() -> AsyncIterator[dict[str, Any]]:
            for rec in records:
                yield rec

        await _workers(items(), one, self.cfg.concurrency)

    async def _object(self, rec: dict[str, Any], listed: Mapping[str, ObjectInfo]) -> None:
        key, size, etag = rec["key"], int(rec["size"]), _etag(rec.get("etag", ""))
        self.n["objects"] += 1
        info = listed.get(key)
        if info is None or (etag and not _etag(info.etag)):
            info = await self._head(key)
        else:
            self.n["listed"] += 1
        if info is None:
            self.findings.add(Finding(OBJECT_MISSING, key))
            if self.by_object is not None:
                self.by_object.mark_missing(key)
        elif info.size != size:
            self.findings.add(Finding(OBJECT_SIZE, key,
                                      detail=f"store has {info.size} bytes, committed {size}"))
        elif etag and _etag(info.etag) and _etag(info.etag) != etag:
            self.findings.add(Finding(OBJECT_CHECKSUM, key,
                                      detail=f"ETag {_etag(info.etag)}, committed {etag}"))
        side = sidecar_key(key)
        self.n["manifests"] += 1
        if side not in listed and await self._head(side) is None:
            self.findings.add(Finding(MANIFEST_MISSING, side, detail=f"of {key}"))

    async def _head(self, key: str) -> ObjectInfo | None:
        self.n["heads"] += 1
        return await self.backend.stat(key)

    # -- --deep: members read back by range and hashed -----------------------------------
    async def members(self, sample: float | None, seed: int) -> None:
        assert self.by_object is not None
        by_object = self.by_object
        sampler = _Sampler(self.n["rows"], sample, seed)
        selected = nbytes = 0
        async for batch in _db_batches(self.cp, "index"):
            chosen = [row for _, row in batch if sampler.take()]
            by_object.add(chosen)
            selected += len(chosen)
            nbytes += sum(int(r["length"]) for r in chosen)
        self.n["members_selected"] = selected
        bar = Bar("verify members", total_bytes=nbytes, total_files=selected,
                  enabled=self.progress)
        pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="hash")

        async def objects() -> AsyncIterator[tuple[str, list[_Member]]]:
            for key, members in by_object.objects():
                if not await self.cp.call(self.cp.has_object, key):
                    self.findings.add(Finding(UNCOMMITTED_OBJECT, key,
                                              detail=f"{len(members)} index rows"))
                if by_object.is_missing(key):  # reported by the store pass already
                    self.n["members_unverified"] += len(members)
                    continue
                yield key, members

        async def check(item: tuple[str, list[_Member]]) -> None:
            await self._object_members(*item, pool=pool, bar=bar)

        try:
            await _workers(objects(), check, self.cfg.concurrency)
        finally:
            pool.shutdown(wait=False)
            bar.close()

    def _member_done(self, key: str, m: _Member, digest: str, bar: Bar) -> None:
        self.n["members_checked"] += 1
        bar.update(files=1, nbytes=m.length)
        if digest != m.blake3:
            self.findings.add(Finding(
                MEMBER_ALTERED, key, m.path,
                f"bytes {m.offset}-{m.end - 1}: blake3 differs from the index"))

    async def _object_members(self, key: str, members: list[_Member], *, pool: Executor,
                              bar: Bar) -> None:
        for m in members:
            if m.length == 0:
                self._member_done(key, m, _EMPTY_BLAKE3, bar)
        runs = _runs([m for m in members if m.length > 0], self.cfg.max_gap)
        for i, run in enumerate(runs):
            try:
                await self._run(key, run, pool=pool, bar=bar)
            except ObjectNotFoundError:
                # Deleted since the store pass looked: nothing more to read from it.
                self.findings.add(Finding(OBJECT_MISSING, key, detail="while reading members"))
                self.n["members_unverified"] += sum(len(r) for r in runs[i:])
                return

    async def _run(self, key: str, run: list[_Member], *, pool: Executor, bar: Bar) -> None:
        """Read one run of members in chunks of at most cfg.chunk bytes, hashing as they come."""
        loop = asyncio.get_running_loop()
        state = _RunHash(run)
        pos, end = run[0].offset, max(m.end for m in run)
        while pos < end:
            want = min(self.cfg.chunk, end - pos)
            try:
                data = await self.backend.load(key, offset=pos, length=want)
            except (ObjectNotFoundError, PermanentBackendError):
                raise
            except BackendError as exc:  # e.g. InvalidRange: the object is shorter
                self._unreadable(key, state, f"reading bytes {pos}-{pos + want - 1}: {exc}")
                return
            self.n["range_requests"] += 1
            self.n["bytes_read"] += len(data)
            for m, digest in await loop.run_in_executor(pool, state.feed, pos, data):
                self._member_done(key, m, digest, bar)
            if len(data) < want:
                self._unreadable(key, state, f"object ends at byte {pos + len(data)}")
                return
            pos += want

    def _unreadable(self, key: str, state: _RunHash, why: str) -> None:
        for m in state.unfinished():
            self.n["members_unverified"] += 1
            self.findings.add(Finding(MEMBER_UNREADABLE, key, m.path, why))

    # -- --source: the NAS against the index --------------------------------------------
    async def sources(self, sample: float | None, seed: int) -> None:
        """Re-stat and re-hash the (sampled) indexed files, in bounded reader threads."""
        sampler = _Sampler(self.n["rows"], sample, seed)
        bar = Bar("verify sources", total_bytes=None, total_files=None, enabled=self.progress)
        pool = ThreadPoolExecutor(max_workers=self.cfg.read_threads,
                                  thread_name_prefix="source")
        loop = asyncio.get_running_loop()

        async def rows() -> AsyncIterator[dict[str, Any]]:
            async for batch in _db_batches(self.cp, "index"):
                for _, row in batch:
                    if sampler.take():
                        self.n["sources_selected"] += 1
                        yield row

        async def check(row: dict[str, Any]) -> None:
            finding, hashed = await loop.run_in_executor(
                pool, _source_state, bytes.fromhex(row["path_hex"]), int(row["size"]),
                int(row["mtime_ns"]), row["blake3"])
            self.n["sources_checked"] += 1
            self.n["sources_bytes"] += hashed
            if finding is not None:
                self.findings.add(finding)
            bar.update(files=1, nbytes=hashed)

        try:
            await _workers(rows(), check, self.cfg.read_threads * 2)
        finally:
            pool.shutdown(wait=False)
            bar.close()

    async def walk(self, recorded: list[str]) -> None:
        """Every regular file under the recorded source roots must be in the index."""
        bar = Bar("walk sources", total_bytes=None, total_files=None, enabled=self.progress)
        # Relative roots resolve against the working directory, as `migrate` resolved them.
        roots = [os.fsencode(os.path.abspath(s)) for s in recorded]
        for text, root in zip(recorded, roots):
            if not os.path.isdir(root):
                relative = "" if os.path.isabs(text) else (
                    f", recorded as {text!r}: relative to the current directory")
                self.findings.add(Finding(SOURCE_GONE, path=root,
                                          detail=f"source root missing{relative}"))
        try:
            async for batch in scan(roots, threads=self.cfg.scan_threads):
                entries = [e for e in batch if isinstance(e, FileEntry)]
                for p in batch:
                    if isinstance(p, Problem) and not p.final:  # symlinks etc. were skipped too
                        self.findings.add(Finding(SOURCE_UNREADABLE, path=p.path,
                                                  detail=f"{p.reason} {p.detail}".strip()))
                for path in await self.cp.call(_not_indexed, self.cp, [e.path for e in entries]):
                    self.findings.add(Finding(SOURCE_NOT_INDEXED, path=path,
                                              detail="on the source, not migrated"))
                self.n["sources_walked"] += len(entries)
                bar.update(files=len(entries), nbytes=sum(e.size for e in entries))
        finally:
            bar.close()


async def verify(opened: Opened, *, deep: bool = False, sample: float | None = None,
                 seed: int = 0, source: bool = False, progress: bool = False,
                 report: Path | None = None, config: VerifyConfig | None = None
                 ) -> VerifyResult:
    """Check a migration without downloading whole objects; return what was found.

    Always: every committed object exists in the store with the size and ETag recorded at
    commit, and has its sidecar manifest (one LIST per hashed prefix, HEAD only as a
    fallback). deep: read index rows back by range and compare blake3 (members of one
    object are coalesced into ranges of at most config.chunk bytes). source: re-stat and
    re-hash indexed source files, and walk the source roots for files not in the index.
    sample (percent, with seed) limits both deep and source to the same random rows.
    report: write a JSON report there (totals, then every finding).
    """
    cfg = config or VerifyConfig()
    if sample is not None and not 0 < sample <= 100:
        raise ConfigError(f"--sample must be a percent in (0, 100], not {sample}")
    if sample is not None and not (deep or source):
        raise ConfigError("--sample applies to --deep and --source; give one of them")
    started = time.monotonic()
    spool_path = report.with_name(report.name + ".findings.tmp") if report else None
    spool = _open_spool(spool_path) if spool_path else None
    try:
        findings = _Findings(keep=cfg.keep_findings, spool=spool)
        run = _Verify(opened, cfg, findings, progress=progress)
        run.n["rows"] = (await opened.cp.call(opened.cp.counts))["index"]
        if deep:
            run.by_object = _ByObject(cfg.work_dir or opened.cp.state_dir)
        try:
            await run.store()
            if deep:
                await run.members(sample, seed)
        finally:
            if run.by_object is not None:
                run.by_object.close()
        if source:
            await run.sources(sample, seed)
            await run.walk(list((opened.cp.get_meta("config") or {}).get("sources", [])))
        result = VerifyResult(run.counts(), findings.errors, findings.warnings,
                              MappingProxyType(dict(findings.by_kind)), tuple(findings.kept),
                              round(time.monotonic() - started, 3))
        if report is not None and spool is not None:
            head = {"tool": "pacsmigrate", "format": "pacsmigrate.verify/1",
                    "written": now_iso(), "destination": str(opened.dest),
                    "sources": (opened.cp.get_meta("config") or {}).get("sources", []),
                    "options": {"deep": deep, "sample": sample, "seed": seed,
                                "source": source},
                    "ok": result.ok, "totals": result.totals()}
            await asyncio.to_thread(_write_report, report, head, spool)
        return result
    finally:
        if spool is not None:
            spool.close()
        if spool_path is not None:
            spool_path.unlink(missing_ok=True)


def _open_spool(path: Path) -> IO[str]:
    """Findings go here as they are found, so the report never holds them all in memory."""
    try:
        return open(path, "w+", encoding="ascii")  # closed by verify()
    except OSError as exc:
        raise ConfigError(f"cannot write the report beside {path}: {exc}") from exc


def _write_report(path: Path, head: dict[str, Any], spool: IO[str]) -> None:
    """The head (options, totals), then the findings streamed from the spool."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="ascii") as out:
            out.write(json.dumps(head, ensure_ascii=True, indent=1)[:-2])
            out.write(',\n"findings": [')
            spool.seek(0)
            out.writelines(("\n" if n == 0 else ",\n") + line.rstrip("\n")
                           for n, line in enumerate(spool))
            out.write("\n]\n}\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write report {path}: {exc}") from exc


__all__ = ["WARNINGS", "Counts", "Finding", "VerifyConfig", "VerifyResult", "verify"]
