"""Slice states kept in the store: a run on workers that share no path (`--slice-states
store`, the default with --scheduler).

A slice runs on a Dask worker with its state in the worker's own directory. When the slice
is done the worker leaves a copy of that state in the store (keys.RUN_DIR/slices/RUN/K-of-S/
TIME.lmdb, blake3 in its metadata) and the coordinator reads the copies back to merge them:
the store is the one place every machine reaches.

Each attempt at a slice first leaves a record in the store (attempt-ID.json beside the
copies); a copy, once stored, replaces the records. So a slice that starts sees whether
anyone ran it since its newest copy without leaving one. If nobody did, it starts from that
copy (or from nothing), and a machine holding the slice's state from that copy keeps its
own: its intents settle what it left in flight. If someone did (a lost worker), it starts
from the copy and learns from the store what was stored since: every object the store
dated since the copy (or since the run began, by the store's own clock, less a margin for
gateways whose clocks differ) is described by its manifest, and the entries that belong to
this slice are adopted, so it uploads only the rest. The cost is a listing of the prefix
and two ranged reads per object stored since then, by any slice: paid only after a loss.
Copies are numbered by generation (the one a state started from, plus one), not by any
machine's clock. A multipart upload the lost worker left half done is found by its key
when the slice plans the same bundle again, and its parts reused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles
import blake3

from . import keys
from .backends.base import Backend, ObjectInfo, one_chunk
from .checkpoint import Checkpoint
from .config import Destination, MigrateConfig
from .errors import BackendError, StateError
from .lmdbfile import data_file, env_dir
from .rebuild import RebuildResult, commit_described, described
from .records import now_iso
from .setup import key_secret, write_once
from .shard import Shard

log = logging.getLogger("pacsmigrate.slicestore")

MARGIN = 900.0  # seconds of the store's clock read again before a copy's date
RANGE = 16 << 20  # one ranged read of a copy
HASH_META = "pacsmigrate-blake3"
HELD = "slice_copy"  # meta: the copy in the store a state started from (or is)
ATTEMPT = "slice_attempt"  # meta: the attempt that made this state (its record's id)
SEEDED = "slice_seeded"  # meta: written last, once the state is whole
FOUND = "slice_found"  # meta: files a lost attempt stored, adopted by the seed (take_found)


def run_prefix(dest: Destination, run_id: str) -> str:
    return dest.key(keys.RUN_DIR, "slices", run_id)


def marker_key(dest: Destination, run_id: str) -> str:
    """Written before the run's first slice starts: its date bounds what a slice with no
    copy yet must look at."""
    return f"{run_prefix(dest, run_id)}/started.json"


def slice_prefix(dest: Destination, run_id: str, shard: Shard) -> str:
    return f"{run_prefix(dest, run_id)}/{shard.index}-of-{shard.count}/"


def copy_name(generation: int) -> str:
    return f"copy-{generation:012d}.lmdb"


def generation_of(key: str | None) -> int:
    name = (key or "").rpartition("/")[2]
    return int(name[5:17]) if name.startswith("copy-") and name.endswith(".lmdb") else 0


async def mark_start(backend: Backend, dest: Destination, run_id: str) -> None:
    await write_once(backend, marker_key(dest, run_id), {"run": run_id, "started": now_iso()})


@dataclass
class InStore:
    """What the store holds of one slice: its newest copy and the attempts since."""

    newest: ObjectInfo | None = None
    attempts: set[str] = field(default_factory=set)  # ids of attempts that left no copy


async def in_store(backend: Backend, dest: Destination, run_id: str, shard: Shard) -> InStore:
    found, newest = InStore(), ""
    async for info in backend.list(slice_prefix(dest, run_id, shard)):
        name = info.key.rpartition("/")[2]
        if generation_of(info.key) and name > newest.rpartition("/")[2]:
            newest = info.key
        elif name.startswith("attempt-") and name.endswith(".json"):
            found.attempts.add(name[8:-5])
    if newest:
        found.newest = await backend.stat(newest)  # with its metadata (the blake3)
    return found


async def newest_copy(backend: Backend, dest: Destination, run_id: str,
                      shard: Shard) -> ObjectInfo | None:
    """The slice's latest copy in the store (the highest generation), with its metadata."""
    return (await in_store(backend, dest, run_id, shard)).newest


@dataclass(frozen=True)
class Held:
    """What a whole local state says of itself (see seed)."""

    copy: str | None
    attempt: str | None


def held(state_dir: Path) -> Held | None:
    """The copy and attempt a local state came from; None when there is no whole state."""
    if not data_file(state_dir).is_file():
        return None
    cp = Checkpoint(state_dir, readonly=True, idle=True)
    try:
        if not cp.get_meta(SEEDED):
            return None  # its start was cut short: not to be trusted
        return Held(cp.get_meta(HELD), cp.get_meta(ATTEMPT))
    finally:
        cp.close()


def held_copy(state_dir: Path) -> str | None:
    """The copy a local state is (or started from), if it is whole."""
    h = held(state_dir)
    return h.copy if h is not None else None


async def seed(cfg: MigrateConfig, backend: Backend, run_id: str) -> str:
    """Make cfg.state_dir the state this slice resumes from; says what it started from."""
    assert cfg.shard is not None
    store = await in_store(backend, cfg.dest, run_id, cfg.shard)
    newest = store.newest.key if store.newest else None
    mine = held(cfg.state_dir)
    if mine is not None and mine.copy == newest and store.attempts <= {mine.attempt}:
        return "its state on this worker"  # nobody ran the slice since this state began
    attempt = uuid.uuid4().hex
    await backend.save(slice_prefix(cfg.dest, run_id, cfg.shard) + f"attempt-{attempt}.json",
                       one_chunk(json.dumps({"started": now_iso()}).encode()))
    shutil.rmtree(cfg.state_dir, ignore_errors=True)
    if store.newest is not None:
        await fetch(backend, store.newest, data_file(cfg.state_dir))
        since = store.newest.modified
    else:
        marker = await backend.stat(marker_key(cfg.dest, run_id))
        since = marker.modified if marker is not None else 0.0
    cp = Checkpoint(cfg.state_dir)
    try:
        await key_secret(cp, backend, cfg.dest)
        found = 0
        if store.attempts:  # someone ran it since and left no copy: see what it stored
            found = await adopt_since(cp, backend, cfg,
                                      max(0.0, since - MARGIN) if since else 0.0)
        cp.put_meta(FOUND, found)
        cp.put_meta(HELD, newest)
        cp.put_meta(ATTEMPT, attempt)
        cp.put_meta(SEEDED, True)
    finally:
        cp.close()
    start = "its copy in the store" if newest else "an empty state"
    if not store.attempts:
        return start
    return f"{start}, {found:,} files found in the store from an attempt that left no copy"


def take_found(state_dir: Path) -> int:
    """The files the seed adopted from a lost attempt, once: the slice's run counts them as
    migrated now (its walk finds them indexed, as if migrated before)."""
    cp = Checkpoint(state_dir)
    try:
        found = int(cp.get_meta(FOUND) or 0)
        if found:
            cp.put_meta(FOUND, 0)
    finally:
        cp.close()
    return found


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
    """Leave a copy of the slice's state in the store; returns its key. The copy replaces
    older copies and the attempt records (a store whose lock keeps them keeps them: the
    highest generation is the one read)."""
    assert cfg.shard is not None
    prefix = slice_prefix(cfg.dest, run_id, cfg.shard)
    work = cfg.state_dir.with_name(cfg.state_dir.name + ".copy")
    cp = Checkpoint(cfg.state_dir)
    try:
        key = prefix + copy_name(generation_of(cp.get_meta(HELD)) + 1)
        await asyncio.to_thread(cp.snapshot, env_dir(work))
        copy = Checkpoint(work)
        try:  # the copy is the state that a worker holding it resumes
            copy.put_meta(HELD, key)
            copy.put_meta(ATTEMPT, None)
        finally:
            copy.close()
        data = data_file(work)
        try:
            digest = await asyncio.to_thread(_blake3_of, data)
            await backend.save(key, _chunks(data, backend.part_size(data.stat().st_size)),
                               metadata={HASH_META: digest})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        cp.put_meta(HELD, key)  # only once the store holds it
        cp.put_meta(ATTEMPT, None)
    finally:
        cp.close()
    async for info in backend.list(prefix):
        if info.key != key and generation_of(info.key) < generation_of(key):
            try:
                await backend.remove(info.key)
            except BackendError as exc:
                log.info("an older record of slice %s stays: %s", cfg.shard, exc)
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


def _blake3_of(path: Path) -> str:
    h = blake3.blake3(max_threads=1)
    h.update_mmap(path)
    return h.hexdigest()


async def _chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    async with aiofiles.open(path, "rb") as f:
        while chunk := await f.read(size):
            yield chunk


__all__ = ["fetch", "held_copy", "mark_start", "newest_copy", "seed", "ship"]
