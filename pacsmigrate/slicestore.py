"""Slice states kept in the store: a run on workers that share no path (`--slice-states
store`, the default with --scheduler).

A slice runs on a Dask worker with its state in the worker's own directory. When the slice
is done the worker leaves a copy of that state in the store (keys.RUN_DIR/slices/RUN/K-of-S/
TIME.lmdb, blake3 in its metadata) and the coordinator reads the copies back to merge them:
the store is the one place every machine reaches.

A slice whose worker was lost starts again elsewhere from its last copy (or from nothing)
and learns from the store what the lost worker stored: every object the store dated since
that copy (by the store's own clock, less a margin for gateways whose clocks differ) is
described by its manifest, and the entries that belong to this slice are adopted. So it
uploads only the rest. The cost is two ranged reads per object stored since then, by any
slice: a lost worker is rare, a run that re-reads and re-sends a slice is not cheap.

A machine that ran the slice before keeps its own state when that state is the latest (it
started from the newest copy, or no copy exists yet): its intents settle what it left in
flight. An upload the lost worker left half done (a multipart upload) is aborted by the
coordinator at the end (abort_strays).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiofiles
import blake3

from . import keys
from .backends.base import Backend, ObjectInfo, PendingUploads, one_chunk
from .checkpoint import Checkpoint
from .config import Destination, MigrateConfig
from .errors import BackendError, ObjectExistsError, StateError
from .rebuild import RebuildResult, commit_described, described
from .records import now_iso
from .setup import key_secret
from .shard import Shard

log = logging.getLogger("pacsmigrate.slicestore")

MARGIN = 900.0  # seconds of the store's clock read again before a copy's date
RANGE = 16 << 20  # one ranged read of a copy
HASH_META = "pacsmigrate-blake3"
HELD = "slice_copy"  # meta: the copy in the store a state started from (or is)


def run_prefix(dest: Destination, run_id: str) -> str:
    return dest.key(keys.RUN_DIR, "slices", run_id)


def marker_key(dest: Destination, run_id: str) -> str:
    """Written before the run's first slice starts: its date bounds what a slice with no
    copy yet must look at."""
    return f"{run_prefix(dest, run_id)}/started.json"


def copies_prefix(dest: Destination, run_id: str, shard: Shard) -> str:
    return f"{run_prefix(dest, run_id)}/{shard.index}-of-{shard.count}/"


async def mark_start(backend: Backend, dest: Destination, run_id: str) -> None:
    key = marker_key(dest, run_id)
    if await backend.stat(key) is not None:
        return
    doc = {"run": run_id, "started": now_iso()}
    try:
        await backend.save(key, one_chunk(json.dumps(doc).encode()))
    except ObjectExistsError:
        pass


async def newest_copy(backend: Backend, dest: Destination, run_id: str,
                      shard: Shard) -> ObjectInfo | None:
    """The slice's latest copy in the store (names sort by time), with its metadata."""
    newest: str | None = None
    async for info in backend.list(copies_prefix(dest, run_id, shard)):
        if info.key.endswith(".lmdb") and (newest is None or info.key > newest):
            newest = info.key
    return None if newest is None else await backend.stat(newest)


def held_copy(state_dir: Path) -> str | None | bool:
    """The copy a local state started from (None: from nothing); False: no local state."""
    if not (state_dir / "checkpoint.lmdb" / "data.mdb").is_file():
        return False
    cp = Checkpoint(state_dir, readonly=True, idle=True)
    try:
        held: str | None = cp.get_meta(HELD)
        return held
    finally:
        cp.close()


async def seed(cfg: MigrateConfig, backend: Backend, run_id: str) -> str:
    """Make cfg.state_dir the state this slice resumes from; says what it started from."""
    assert cfg.shard is not None
    newest = await newest_copy(backend, cfg.dest, run_id, cfg.shard)
    held = held_copy(cfg.state_dir)
    if held is not False and held == (newest.key if newest else None):
        return "its state on this worker"
    shutil.rmtree(cfg.state_dir, ignore_errors=True)
    if newest is not None:
        await fetch(backend, newest, cfg.state_dir / "checkpoint.lmdb" / "data.mdb")
        since = newest.modified
    else:
        marker = await backend.stat(marker_key(cfg.dest, run_id))
        since = marker.modified if marker is not None else 0.0
    cp = Checkpoint(cfg.state_dir)
    try:
        cp.put_meta(HELD, newest.key if newest else None)
        await key_secret(cp, backend, cfg.dest)
        found = await adopt_since(cp, backend, cfg, max(0.0, since - MARGIN) if since else 0.0)
    finally:
        cp.close()
    return (f"{'its copy in the store' if newest else 'an empty state'}, {found:,} files "
            "found in the store since")


async def adopt_since(cp: Checkpoint, backend: Backend, cfg: MigrateConfig,
                      since: float) -> int:
    """Adopt the entries of this slice in objects the store dated at or after `since`
    (0: all of them) that the state does not hold; returns how many files."""
    assert cfg.shard is not None
    shard = cfg.shard
    roots = [os.fsencode(os.path.abspath(s)) for s in cfg.sources]
    result = RebuildResult()
    async for doc, data in described(backend, cfg.dest, result, since=since):
        if await cp.call(cp.object_record, doc["key"]) is None:
            await commit_described(cp, doc, data, result,
                                   keep=lambda path: shard.holds(roots, path))
    for key in result.unreadable + result.missing_objects:
        log.warning("slice %s: cannot read what %s holds; its files are sent again", shard, key)
    return result.rows


async def ship(cfg: MigrateConfig, backend: Backend, run_id: str) -> str:
    """Leave a copy of the slice's state in the store; returns its key. Older copies are
    removed (a store whose lock keeps them keeps them: the newest is the one read)."""
    assert cfg.shard is not None
    prefix = copies_prefix(cfg.dest, run_id, cfg.shard)
    key = f"{prefix}{time.time_ns():020d}.lmdb"
    work = cfg.state_dir.with_name(cfg.state_dir.name + ".copy")
    cp = Checkpoint(cfg.state_dir)
    try:
        cp.put_meta(HELD, key)  # the copy is the state a worker holding it resumes
        data = await asyncio.to_thread(cp.snapshot, work)
    finally:
        cp.close()
    try:
        digest = await asyncio.to_thread(_blake3_of, data)
        size = data.stat().st_size
        await backend.save(key, _chunks(data, backend.part_size(size)),
                           metadata={HASH_META: digest})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    async for info in backend.list(prefix):
        if info.key < key:
            try:
                await backend.remove(info.key)
            except BackendError as exc:
                log.info("an older copy of slice %s stays: %s", cfg.shard, exc)
    return key


async def fetch(backend: Backend, info: ObjectInfo, target: Path) -> None:
    """Read a copy into target (whole, checked against its blake3, then renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    h = blake3.blake3()
    async with aiofiles.open(tmp, "wb") as f:
        done = 0
        while done < info.size:
            data = await backend.load(info.key, offset=done,
                                      length=min(RANGE, info.size - done))
            if not data:
                break
            h.update(data)
            await f.write(data)
            done += len(data)
        await f.flush()
        await asyncio.to_thread(os.fsync, f.fileno())
    want = info.metadata.get(HASH_META)
    if done != info.size or (want and h.hexdigest() != want):
        tmp.unlink(missing_ok=True)
        raise StateError(f"the copy of a slice state at {info.key} does not read back whole "
                         "(size or blake3 differ); run again")
    os.replace(tmp, target)


async def abort_strays(backend: Backend, dest: Destination, started: float) -> int:
    """Abort unfinished uploads under the prefix begun after `started` (epoch seconds, the
    store's clock): every slice of the run is done, so none is ours to resume; they were
    left by lost workers. Returns how many. Azure keeps no start time for staged blocks
    (none is aborted here); it drops uncommitted blocks itself after seven days."""
    if not isinstance(backend, PendingUploads):
        return 0
    n = 0
    prefix = dest.key("")
    async for up in backend.pending_uploads(f"{prefix}/" if prefix else ""):
        if up.initiated >= started - MARGIN:
            await backend.abort_upload(up)
            n += 1
    return n


def _blake3_of(path: Path) -> str:
    h = blake3.blake3(max_threads=1)
    h.update_mmap(path)
    return h.hexdigest()


async def _chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    async with aiofiles.open(path, "rb") as f:
        while chunk := await f.read(size):
            yield chunk


__all__ = ["abort_strays", "fetch", "mark_start", "newest_copy", "seed", "ship"]
