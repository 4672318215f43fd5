"""The LMDB file under a state directory: the lock, one writer thread, a growing map,
clean failure on a full disk, and compaction. What the tables mean is checkpoint.py's."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import itertools
import math
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from .errors import NoRoomToCompactError, StateError, StateLockedError

T = TypeVar("T")

# The map starts small and doubles whenever a write finds it full.
INITIAL_MAP_SIZE = 1 << 30
LOW_SPACE = 16 << 20  # below this, a failed write is reported as a full disk
COPY_BATCH = 4096  # rows per transaction when compacting
# A state directory's one LMDB environment: STATE/checkpoint.lmdb/data.mdb (and lock.mdb).
ENV_DIR = "checkpoint.lmdb"
DATA_FILE = "data.mdb"


def env_dir(state_dir: Path) -> Path:
    """The LMDB environment's directory in a state directory."""
    return Path(state_dir) / ENV_DIR


def data_file(state_dir: Path) -> Path:
    """The one file that holds a state's tables (what a snapshot copies, an adopt replaces)."""
    return Path(state_dir) / ENV_DIR / DATA_FILE


def rows_within(pages: int, leaves: Sequence[int]) -> int | None:
    """How many random keys one transaction may put (one in each table of `leaves` leaf
    pages) and dirty about `pages` pages at most; None: any number (every page fits).

    k random keys touch L * (1 - e^(-k/L)) of a table's L leaf pages (Poisson). A write
    transaction holds each page it touches as a malloc'd copy, and LMDB keeps those copies
    for the next transaction (its env's free list), so the largest transaction sets the
    process's anonymous memory for good. Keyed by hashes and UIDs, a table of N rows dirties
    about a page a row once N is large: rows alone would not bound that as tables grow.
    """
    if sum(leaves) <= pages:
        return None
    def touched(k: int) -> float:
        return sum(n * -math.expm1(-k / n) for n in leaves if n)
    low, high = 1, pages
    while touched(high) < pages:  # ends: touched() nears sum(leaves) > pages
        high *= 2
    while low < high:  # the largest k with touched(k) <= pages
        mid = (low + high + 1) // 2
        low, high = (mid, high) if touched(mid) <= pages else (low, mid - 1)
    return low


def lock_held(state_dir: Path) -> bool:
    """Whether a run holds the state in `state_dir` now: its lock cannot be shared (asked,
    then let go at once)."""
    try:
        fd = os.open(state_dir / "lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class LmdbFile:
    """Sole owner of one LMDB environment; every write goes through one thread.

    Async callers use `await cp.call(cp.method, ...)`; the single worker thread keeps
    LMDB's one-writer rule. Reads may run in any thread: each opens its own transaction.
    """

    TABLES: Sequence[str] = ()
    REWRITTEN: Sequence[str] = ()  # tables compact() leaves to rewrite_tables()
    # What a killed compaction leaves in the state directory (its partial copy, as large
    # as the state): removed by the next writer, which holds the lock.
    LEFTOVERS: Sequence[str] = ("checkpoint.compact",)

    def __init__(self, state_dir: Path, *, readonly: bool = False,
                 idle: bool = False) -> None:
        """`idle` (with readonly): refuse a state a run is using, and keep runs out while
        it is open (a shared lock: readers do not exclude each other)."""
        self.state_dir = state_dir
        self.readonly = readonly
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state directory {state_dir}: {exc}") from exc
        self._lock_fd: int | None = None
        if not readonly:
            self._take_lock()
            for name in self.LEFTOVERS:
                shutil.rmtree(state_dir / name, ignore_errors=True)
        elif idle:
            self._share_lock()
        try:
            self._open_env()
        except lmdb.Error as exc:
            self._release_lock()
            raise StateError(f"cannot open checkpoint in {state_dir}: {exc}") from exc
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdb")

    def _open_env(self) -> None:
        self.env = lmdb.open(str(env_dir(self.state_dir)),
                             map_size=INITIAL_MAP_SIZE, max_dbs=len(self.TABLES) + 2,
                             readonly=self.readonly, subdir=True, readahead=False,
                             lock=not self.readonly)
        self.db = {name: self._open_db(name) for name in self.TABLES}

    def _open_db(self, name: str) -> Any:
        if self.readonly:
            try:
                return self.env.open_db(name.encode(), create=False)
            except lmdb.NotFoundError:  # a state written before this table existed
                return None
        return self.env.open_db(name.encode())

    def compact(self) -> int:
        """Rewrite the state with full pages; returns the bytes saved.

        Rows committed in the order the store acknowledges them leave B-tree pages a little
        over half full. Written again in key order with LMDB's append mode, every page is
        full. The copy replaces the file by a rename: a kill leaves the old one whole. It is
        not started, or is given up, when the file system lacks room for it (at 100M files
        it is tens of GB): NoRoomToCompactError, the state as it was.
        """
        data = data_file(self.state_dir)
        fresh = self.state_dir / "checkpoint.compact"
        shutil.rmtree(fresh, ignore_errors=True)
        before = data.stat().st_size
        need, free = self.in_use() + self.rewrite_room(), shutil.disk_usage(self.state_dir).free
        if free < need + LOW_SPACE:
            raise NoRoomToCompactError(
                f"no room to compact the checkpoint: the copy needs up to "
                f"{(need + LOW_SPACE) >> 20} MiB, {free >> 20} MiB are free")
        try:
            # Synced once at the end, before the rename makes the copy the state.
            out = lmdb.open(str(fresh), map_size=max(before * 2, INITIAL_MAP_SIZE),
                            max_dbs=len(self.TABLES) + 2, subdir=True, sync=False,
                            metasync=False)
            try:
                for name in self.TABLES:
                    if name not in self.REWRITTEN:
                        self._copy_table(name, out)
                self.rewrite_tables(out)
                out.sync(True)
            finally:
                out.close()
        except (lmdb.Error, OSError) as exc:
            # The disk filled up meanwhile (asked while the partial copy still takes its
            # room; a rewrite's own files, removed before this is asked, say ENOSPC); any
            # other error (a damaged page read) stops the run.
            full = self._disk_full() or getattr(exc, "errno", None) == errno.ENOSPC
            shutil.rmtree(fresh, ignore_errors=True)
            if full:
                raise NoRoomToCompactError(
                    "no room to compact the checkpoint: the disk filled up during the "
                    "copy") from exc
            raise StateError(f"cannot compact the checkpoint in {self.state_dir}: {exc}") from exc
        self.env.close()  # one environment per file and process: closed before the swap
        try:
            os.replace(fresh / DATA_FILE, data)
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
            self._open_env()
        return before - data.stat().st_size

    def rewrite_tables(self, out: Any) -> None:
        """compact(): write the REWRITTEN tables into `out` (after the others)."""

    def rewrite_room(self) -> int:
        """Bytes rewrite_tables may need beside the copy (files of its own)."""
        return 0

    def _disk_full(self) -> bool:
        """Whether a failed write met a full disk: the file system asked, not the error's
        text (full file systems surface as ENOSPC or, through the map, as EIO)."""
        return shutil.disk_usage(self.state_dir).free < LOW_SPACE

    def in_use(self) -> int:
        """Bytes of the pages the tables hold (free pages left out). A compacted copy
        rewrites them fuller, plus a few pages of its own: compact asks for LOW_SPACE more."""
        with self.env.begin() as txn:
            stats = [txn.stat(self.db[name]) for name in self.TABLES]
        return sum(st["psize"] * (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"])
                   for st in [*stats, self.env.stat()])

    def snapshot(self, target: Path) -> Path:
        """A consistent, compacted copy of the state in directory target (made afresh);
        returns the copy's file. Writes may go on meanwhile: the copy is of one moment."""
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        try:
            self.env.copy(str(target), compact=True)
        except lmdb.Error as exc:
            raise StateError(f"cannot copy the checkpoint in {self.state_dir}: {exc}") from exc
        return target / DATA_FILE

    def adopt(self, data: Path) -> None:
        """Replace this state's file by `data` (an LMDB file made elsewhere), holding the
        lock throughout; a rename, so a kill leaves one or the other whole."""
        self._pool.submit(lambda: None).result()  # no write in flight
        self.env.close()
        try:
            os.replace(data, data_file(self.state_dir))
        finally:
            self._open_env()

    def _copy_table(self, name: str, out: Any) -> None:
        target = out.open_db(name.encode())
        # Rows go from the cursor to putmulti as they are (buffers: no bytes made a row).
        with self.env.begin(db=self.db[name], buffers=True) as src:
            rows = src.cursor().iternext()
            while True:
                # Small batches: a batch's dirty pages are all the memory this takes (50,000
                # rows a batch raised RssAnon by ~50 MB).
                with out.begin(write=True, db=target) as txn:
                    taken, _ = txn.cursor().putmulti(itertools.islice(rows, COPY_BATCH),
                                                     append=True)
                if taken < COPY_BATCH:
                    return

    def _take_lock(self) -> None:
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLockedError(
                f"another pacsmigrate run is using {self.state_dir}; wait for it to finish "
                "or give a different --state"
            ) from None
        self._lock_fd = fd

    def _share_lock(self) -> None:
        try:
            fd = os.open(self.state_dir / "lock", os.O_RDONLY)
        except FileNotFoundError:
            return  # no run ever took it: none is running
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLockedError(f"a pacsmigrate run is using {self.state_dir}; wait for "
                                   "it to finish") from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.env.close()
        self._release_lock()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def _write(self, body: Callable[[lmdb.Transaction], Any]) -> None:
        """One write transaction; the map grows when full; a full disk stops the run cleanly.

        On ENOSPC nothing of this transaction is kept (LMDB aborts it), so the run can be
        resumed once space is freed; an upload acknowledged but not yet committed is adopted
        from its intent then.
        """
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    body(txn)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                if self._disk_full():
                    raise StateError(f"no space left for the checkpoint in {self.state_dir}: "
                                     "free some space, then re-run the same command to "
                                     "resume") from exc
                raise StateError(f"checkpoint write failed in {self.state_dir}: {exc}") from exc
