"""The --source pass: re-stat and re-hash migrated sources, and walk for files not indexed."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..checkpoint import Checkpoint
from ..fanout import workers
from ..progress import Bar
from ..reads import in_shard
from ..shard import Shard, pruner
from ..source import hash_file, open_source
from ..walk import walk
from .common import Job, Sampler, db_batches
from .findings import (
    SOURCE_CHANGED,
    SOURCE_GONE,
    SOURCE_NOT_INDEXED,
    SOURCE_TOUCHED,
    SOURCE_UNREADABLE,
    Finding,
)

NOT_INDEXED = "on the source, not migrated: new since, or left out by a migrate filter"


def _not_indexed(cp: Checkpoint, paths: list[bytes]) -> list[bytes]:
    return [p for p in paths if cp.index_row(p) is None]


KEPT_MTIME = ("content differs (blake3) with size and mtime kept, which a migrate does not "
              "see: damage on the source (the store holds the bytes migrated: `pacsmigrate "
              "restore` them) or an edit that kept the mtime (`touch` the file, then "
              "migrate stores it again)")


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
            actual, hashed = hash_file(f)
    except OSError as exc:
        return Finding(SOURCE_UNREADABLE, path=path, detail=exc.strerror or str(exc)), hashed
    if actual != digest and st.st_mtime_ns == mtime_ns:
        # A migrate does not see it (size and mtime as stored): damage on the source, or
        # an edit that put its mtime back. Which bytes are right is the operator's call.
        return Finding(SOURCE_CHANGED, path=path, detail=KEPT_MTIME), hashed
    if actual != digest:
        return Finding(SOURCE_CHANGED, path=path, detail=(
            "content differs (blake3), mtime changed: the next migrate stores the new "
            "bytes")), hashed
    if st.st_mtime_ns != mtime_ns:
        return Finding(SOURCE_TOUCHED, path=path,
                       detail="mtime changed, bytes identical to the stored copy"), hashed
    return None, hashed


async def check_sources(job: Job, sample: float | None, seed: int) -> None:
    """Re-stat and re-hash the (sampled) indexed files, in bounded reader threads."""
    sampler = Sampler(job.n["rows"], sample, seed)
    bar = Bar("verify sources", total_bytes=None, total_files=None, enabled=job.progress)
    pool = ThreadPoolExecutor(max_workers=job.cfg.read_threads,
                              thread_name_prefix="source")
    loop = asyncio.get_running_loop()

    async def rows() -> AsyncIterator[dict[str, Any]]:
        async for batch in db_batches(job.cp, "index"):
            for _, row in batch:
                if sampler.take():
                    job.n["sources_selected"] += 1
                    yield row

    async def check(row: dict[str, Any]) -> None:
        finding, hashed = await loop.run_in_executor(
            pool, _source_state, bytes.fromhex(row["path_hex"]), int(row["size"]),
            int(row["mtime_ns"]), row["blake3"])
        job.n["sources_checked"] += 1
        job.n["sources_bytes"] += hashed
        if finding is not None:
            job.findings.add(finding)
        bar.update(files=1, nbytes=hashed)

    try:
        await workers(rows(), check, job.cfg.read_threads * 2)
    finally:
        pool.shutdown(wait=False)
        bar.close()


async def walk_sources(job: Job, recorded: list[str], shard: Shard | None = None) -> None:
    """Every regular file under the recorded source roots (in the state's slice, if it
    holds one) must be in the index."""
    bar = Bar("walk sources", total_bytes=None, total_files=None, enabled=job.progress)
    # Relative roots resolve against the working directory, as `migrate` resolved them.
    roots = [os.fsencode(os.path.abspath(s)) for s in recorded]
    for text, root in zip(recorded, roots):
        if not os.path.isdir(root):
            relative = "" if os.path.isabs(text) else (
                f", recorded as {text!r}: relative to the current directory")
            job.findings.add(Finding(SOURCE_GONE, path=root,
                                     detail=f"source root missing{relative}"))
    try:
        async for got in walk(roots, threads=job.cfg.scan_threads,
                              prune=pruner(roots, shard)):
            listing = in_shard(got, roots, shard) if shard is not None else got
            for p in listing.problems:
                if not p.final:  # symlinks etc. were skipped by the migration too
                    job.findings.add(Finding(SOURCE_UNREADABLE, path=p.path,
                                             detail=f"{p.reason} {p.detail}".strip()))
            paths = [listing.path + b"/" + name for name in listing.files]
            for path in await job.cp.call(_not_indexed, job.cp, paths):
                # The state does not keep a run's filters: a file one left out looks new.
                job.findings.add(Finding(SOURCE_NOT_INDEXED, path=path, detail=NOT_INDEXED))
            job.n["sources_walked"] += len(paths)
            bar.update(files=len(paths))
    finally:
        bar.close()
