"""Rebuild a lost state's index from the store alone: every object describes itself."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from . import keys, manifest
from .backends.base import Backend, ObjectInfo
from .checkpoint import Checkpoint
from .config import Destination
from .errors import StateError
from .progress import Bar
from .records import Entry, StoredObject, now_iso
from .setup import SOURCES_FORMAT
from .upload import manifest_of_bundle


@dataclass
class RebuildResult:
    manifests: int = 0
    rows: int = 0  # files in the index (a file stored in several versions: one row)
    superseded: int = 0  # versions of a file that lost to a newer one of it
    missing_objects: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # bundles whose manifest is unreadable


def _newer(mtime_ns: int, old: dict[str, Any] | None, created: str, old_created: str) -> bool:
    """A file migrated twice (it changed on the NAS): the later version wins, as in the run."""
    if old is None:
        return True
    return (mtime_ns, created) >= (int(old["mtime_ns"]), old_created)


async def rebuild(backend: Backend, dest: Destination, cp: Checkpoint, *,
                  progress: bool = False) -> RebuildResult:
    """Read every object's manifest under the prefix and commit it into a fresh checkpoint.

    A tar bundle's manifest is found through its trailer (two range GETs); a raw large
    file's in its sidecar `.json`; bundles from before the trailer have sidecars too. The
    source roots come from the records each run left (keys.sources_key).
    """
    if cp.counts()["objects"]:
        raise StateError(f"{cp.state_dir} already holds a migration; rebuild into a new --state")
    descriptor = dest.key(keys.DESCRIPTOR)
    if await backend.stat(descriptor) is None:
        raise StateError(f"no pacsmigrate store at {dest} (missing {descriptor})")
    secret = json.loads(await backend.load(descriptor))["key_secret"]
    # The store's options (region, provider, SSE, the customer key's MD5): the rebuilt
    # state reaches and reads the store as the migration did.
    cp.put_meta("config", {"dest": str(dest), "endpoint_url": dest.endpoint_url,
                           **dest.options_meta(), "sources": await recorded_sources(backend, dest),
                           "created": now_iso(), "rebuilt_from_store": True})
    cp.put_meta("key_secret", secret)
    result = RebuildResult()
    bar = Bar("rebuild", total_bytes=None, total_files=None, enabled=progress)
    try:
        async for doc, data in described(backend, dest, result):
            rows = await commit_described(cp, doc, data, result)
            bar.update(files=rows)
    finally:
        bar.close()
    await cp.call(cp.merge_sop_log)  # the commits' SOP rows into their table (soplog.py)
    return result


async def recorded_sources(backend: Backend, dest: Destination) -> list[str]:
    """The source roots the runs into this store recorded (setup.record_sources), sorted."""
    found: set[str] = set()
    async for info in backend.list(dest.key(keys.RUN_DIR, "sources") + "/"):
        try:
            doc = json.loads(await backend.load(info.key))
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("format") == SOURCES_FORMAT:
            found.update(str(s) for s in doc.get("sources", []))
    return sorted(found)


async def described(backend: Backend, dest: Destination, result: RebuildResult, *,
                    since: float = 0.0) -> AsyncIterator[tuple[dict[str, Any], ObjectInfo]]:
    """Each stored object under the prefix with its parsed manifest; with `since`, only
    those the store dated at or after it (by its clock). Unreadable manifests and manifests
    whose object is gone are noted in result."""
    prefix = dest.key("")
    sidecar = ""  # the stem of the last sidecar: `id.json` lists before `id.tar`
    async for info in backend.list(f"{prefix}/" if prefix else ""):
        stem, _, ext = info.key.rpartition(".")
        if info.key.rpartition("/")[2] == keys.DESCRIPTOR or not stem or \
                keys.RUN_DIR in info.key.split("/"):
            continue  # the descriptor and run records (or a replica's copies of its source's)
        if since and info.modified and info.modified < since:
            continue
        if ext == "json":
            sidecar = stem
            try:
                doc = manifest.parse(await backend.load(info.key))
            except ValueError:
                result.unreadable.append(info.key)
                continue
            data = await backend.stat(doc["key"])
            if data is None:
                result.missing_objects.append(doc["key"])
                continue
        elif ext == "tar" and stem != sidecar:
            raw = await manifest_of_bundle(backend, info.key, info.size,
                                           stem.rpartition("/")[2])
            if raw is None:
                result.unreadable.append(info.key)
                continue
            doc, data = manifest.parse(raw), info
        else:
            continue
        yield doc, data


async def commit_described(cp: Checkpoint, doc: dict[str, Any], data: ObjectInfo,
                           result: RebuildResult,
                           keep: Callable[[bytes], bool] | None = None) -> int:
    """Commit one described object (as adopted) with those of its entries that `keep`
    accepts and that are newer than what the index holds; returns how many entries."""
    entries, superseded, replacing = await _keep_newest(cp, doc, keep)
    result.superseded += superseded
    if not entries and keep is not None:
        return 0  # nothing of it belongs here (another slice's object)
    await cp.call(cp.commit_objects, [StoredObject(
        doc["key"], doc["kind"], doc["group"], doc.get("bundle_id", ""), data.size,
        data.etag, doc.get("created", ""), tuple(entries), adopted=True,
        retention=doc.get("retention"))])
    result.rows += len(entries) - replacing  # a newer version takes the older one's row
    result.manifests += 1
    return len(entries)


async def _keep_newest(cp: Checkpoint, doc: dict[str, Any],
                       wanted: Callable[[bytes], bool] | None = None
                       ) -> tuple[list[Entry], int, int]:
    """Entries of doc newer than what the rebuilt index holds, how many versions lost, and
    how many of those entries replace a row the index holds."""
    keep = []
    superseded = replacing = 0
    for e in manifest.entries(doc):
        if wanted is not None and not wanted(e.path):
            continue
        old = await cp.call(cp.index_row, e.path)
        old_created = ""
        if old is not None:
            old_obj = await cp.call(cp.object_record, old["key"])
            old_created = old_obj.get("created", "") if old_obj else ""
        if _newer(e.mtime_ns, old, doc.get("created", ""), old_created):
            keep.append(e)
            replacing += old is not None
        superseded += old is not None
    return keep, superseded, replacing
