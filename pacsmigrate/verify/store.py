"""The store pass: every committed object (and a raw file's sidecar), by LIST (HEAD as fallback)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..backends.base import ObjectInfo
from ..fanout import workers
from ..keys import sidecar_key
from ..progress import Bar
from ..records import FILE
from .common import Job, db_batches
from .findings import (
    MANIFEST_MISSING,
    OBJECT_CHECKSUM,
    OBJECT_MISSING,
    OBJECT_SIZE,
    Finding,
)

# Objects in the checkpoint up to which one LIST of the whole prefix is held in memory;
# above it, one LIST per first-level (then second-level) hashed prefix keeps memory flat.
_ONE_LISTING = 50_000
_SHARD_LEVEL_1 = 5_000_000


def _etag(text: str) -> str:
    return text.strip().strip('"').lower()


def _shard(base: str, key: str, depth: int) -> str:
    """The LIST prefix of key: base plus its first `depth` hashed levels."""
    if depth == 0 or not key.startswith(base):
        return base
    levels = key[len(base):].split("/")[:-1][:depth]
    return base + "".join(level + "/" for level in levels)


async def check_store(job: Job) -> None:
    """Compare every committed object (size, ETag) and its manifest with the store."""
    total = (await job.cp.call(job.cp.counts))["objects"]
    depth = 0 if total <= _ONE_LISTING else 1 if total <= _SHARD_LEVEL_1 else 2
    base = job.dest.prefix + "/" if job.dest.prefix else ""
    bar = Bar("verify objects", total_bytes=None, total_files=total, enabled=job.progress)

    async def shards() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        prefix: str | None = None
        records: list[dict[str, Any]] = []
        async for batch in db_batches(job.cp, "objects"):
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
        await _check_shard(job, *shard, bar)

    try:
        await workers(shards(), check, max(1, min(4, job.cfg.concurrency)))
    finally:
        bar.close()


async def _check_shard(job: Job, prefix: str, records: list[dict[str, Any]], bar: Bar) -> None:
    wanted = {r["key"] for r in records} | {sidecar_key(r["key"]) for r in records
                                             if _has_sidecar(r)}
    listed: dict[str, ObjectInfo] = {}
    if job.use_list:
        async for info in job.backend.list(prefix):
            if info.key in wanted:
                listed[info.key] = info

    async def one(rec: dict[str, Any]) -> None:
        await _check_object(job, rec, listed)
        bar.update(files=1, nbytes=int(rec["size"]))

    async def items() -> AsyncIterator[dict[str, Any]]:
        for rec in records:
            yield rec

    await workers(items(), one, job.cfg.concurrency)


async def _check_object(job: Job, rec: dict[str, Any], listed: Mapping[str, ObjectInfo]
                        ) -> None:
    key, size, etag = rec["key"], int(rec["size"]), _etag(rec.get("etag", ""))
    job.n["objects"] += 1
    info = listed.get(key)
    if info is None or (etag and not _etag(info.etag)):
        info = await _head(job, key)
    else:
        job.n["listed"] += 1
    if info is None:
        job.findings.add(Finding(OBJECT_MISSING, key))
        if job.by_object is not None:
            job.by_object.mark_missing(key)
    elif info.size != size:
        job.findings.add(Finding(OBJECT_SIZE, key,
                                 detail=f"store has {info.size} bytes, committed {size}"))
    elif etag and _etag(info.etag) and _etag(info.etag) != etag:
        job.findings.add(Finding(OBJECT_CHECKSUM, key,
                                 detail=f"ETag {_etag(info.etag)}, committed {etag}"))
    if not _has_sidecar(rec):
        return  # a tar bundle's manifest is inside it: its size and ETag vouch for it
    side = sidecar_key(key)
    job.n["manifests"] += 1
    if side not in listed and await _head(job, side) is None:
        job.findings.add(Finding(MANIFEST_MISSING, side, detail=f"of {key}"))


def _has_sidecar(rec: dict[str, Any]) -> bool:
    """Raw large files keep their manifest beside them; so did bundles before trailers."""
    return rec.get("kind") == FILE or "id" not in rec


async def _head(job: Job, key: str) -> ObjectInfo | None:
    job.n["heads"] += 1
    return await job.backend.stat(key)
