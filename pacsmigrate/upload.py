"""Upload stage: pack a plan and store it in one request (or a multipart upload); recover
the objects a killed run left behind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import blake3

from . import faults, manifest
from .backends.base import Backend, ObjectInfo, one_chunk
from .backends.body import Buffer
from .bundle import Built, Known, file_parts, tar_parts
from .errors import BackendError, ObjectArchivedError, ObjectExistsError, SourceChangedError
from .keys import sidecar_key
from .paths import member_name
from .records import FILE, TAR, BundlePlan, Entry, StoredObject
from .retention import manifest_fields

log = logging.getLogger(__name__)

META = {"pacsmigrate-format": "2"}
INLINE_MAX = 1 << 20  # bundles this small, all in memory, are packed on the event loop
LEGACY_TAIL = 8 << 20


async def _parts(gen: Iterator[Buffer], first: Buffer, pool: Executor) -> AsyncIterator[Buffer]:
    loop = asyncio.get_running_loop()
    yield first
    faults.point("mid-upload")
    while (chunk := await loop.run_in_executor(pool, next, gen, None)) is not None:
        yield chunk


async def _listed(chunks: list[Buffer]) -> AsyncIterator[Buffer]:
    for i, chunk in enumerate(chunks):
        if i == 1:
            faults.point("mid-upload")
        yield chunk


async def store(plan: BundlePlan, backend: Backend, pool: Executor, *, secret: bytes,
                expect: dict[bytes, str] | None = None, known: Known | None = None,
                compress: str = "", take: Callable[[int], bytearray] = bytearray
                ) -> tuple[StoredObject | None, Built]:
    """Pack and store one plan. None when no member could be packed (all moved/vanished).

    Source reads run in `pool`; at most a few parts per object are in memory at once.
    `take(n)`: a buffer for a tar part of about n bytes (see tar_parts).
    """
    built = Built(retention=manifest_fields(plan.policy))
    part_size = backend.part_size(plan.size)
    gen = tar_parts(plan, built, part_size=part_size, secret=secret, expect=expect,
                    known=known, compress=compress, take=take) if plan.kind == TAR else file_parts(
        plan, built, part_size=part_size, secret=secret, expect=expect)
    meta = {**META, "pacsmigrate-kind": plan.kind, **plan.policy}
    try:
        if plan.size <= INLINE_MAX and not compress and all(
                m.data is not None for m in plan.members):
            chunks = list(gen)  # no file to read: cheaper here than a thread hand-off
            if not chunks:
                return None, built
            info = await backend.save(plan.key, _listed(chunks), metadata=meta)
        else:
            first = await asyncio.get_running_loop().run_in_executor(pool, next, gen, None)
            if first is None:
                return None, built
            info = await backend.save(plan.key, _parts(gen, first, pool), metadata=meta)
    except SourceChangedError:
        # The upload was aborted; the file is read again on the next pass.
        built.reread += 1
        built.again.extend(plan.members)
        return None, built
    except ObjectExistsError:
        # An earlier attempt stored this exact plan (deterministic key): adopt what it
        # stored. Plan members its manifest lacks are read again on the next pass.
        return await recover(plan, backend), Built()
    faults.point("after-upload")
    if plan.kind == FILE:
        await save_sidecar(backend, plan.key, built.manifest)
    faults.point("after-sidecar")
    return _stored(plan, info, built.created, built.entries, retention=built.retention), built


def _stored(plan: BundlePlan, info: ObjectInfo, created: str, entries: list[Entry],
            *, adopted: bool = False, retention: dict[str, Any] | None = None) -> StoredObject:
    return StoredObject(plan.key, plan.kind, plan.group, plan.bundle_id, info.size, info.etag,
                        created, tuple(entries), adopted, retention)


async def save_sidecar(backend: Backend, key: str, doc: Buffer) -> None:
    """The manifest beside a raw object (a tar bundle carries its own)."""
    try:
        await backend.save(sidecar_key(key), one_chunk(doc), metadata=META)
    except ObjectExistsError:
        pass  # written by the attempt that stored the object


async def recover(plan: BundlePlan, backend: Backend) -> StoredObject | None:
    """What an interrupted run stored at plan.key, or None if nothing is there.

    Evidence, in order: a sidecar manifest; else the manifest the tar's trailer points at
    (or, in bundles older than the trailer, found walking back from the tail); else, for a
    raw large file, the object's bytes hashed afresh. An object at our key that none of
    these explains is an error, never silently reused.
    """
    info = await backend.stat(plan.key)
    if info is None:
        return None
    try:
        raw = await _find_manifest(plan, backend, info)
    except ObjectArchivedError:
        await _replace_archived(plan, backend)
        return None
    try:
        doc = manifest.parse(raw) if raw is not None else None
    except ValueError:
        doc = None
    if doc is None or doc.get("key") != plan.key or any(
            int(m["offset"]) + int(m["length"]) > info.size for m in doc["members"]
            if m.get("duplicate_of", plan.key) == plan.key):
        raise BackendError(f"an object not written by this migration is at {plan.key}; "
                           "move it away and re-run", key=plan.key)
    assert raw is not None
    if plan.kind == FILE:
        await save_sidecar(backend, plan.key, raw)
    return _stored(plan, info, doc.get("created", ""), manifest.entries(doc), adopted=True,
                   retention=doc.get("retention"))


async def _replace_archived(plan: BundlePlan, backend: Backend) -> None:
    """The interrupted attempt stored the object in an archive class (GLACIER, DEEP_ARCHIVE,
    Azure Archive), where it cannot be read back to be checked: never adopted unchecked, it
    is removed and the plan stored again (a re-run stayed stuck on it, asking for a restore
    of an object the index did not know). A lock that keeps it is said in one line."""
    try:
        await backend.remove(plan.key)
    except BackendError as exc:
        raise BackendError(
            f"{plan.key}, stored by an interrupted run in an archive class, cannot be read "
            f"back to be checked nor removed ({exc}): restore it (aws s3api restore-object, "
            "or az storage blob set-tier), then re-run", key=plan.key) from exc
    log.info("%s: stored by an interrupted run in an archive class, unreadable until "
             "restored: removed, to be stored again", plan.key)


async def _find_manifest(plan: BundlePlan, backend: Backend, info: ObjectInfo) -> bytes | None:
    if await backend.stat(sidecar_key(plan.key)) is not None:
        return await backend.load(sidecar_key(plan.key))
    if plan.kind == TAR:
        return await manifest_of_bundle(backend, plan.key, info.size, plan.bundle_id)
    rec = plan.members[0]
    h = blake3.blake3()
    for offset in range(0, info.size, LEGACY_TAIL):  # hashed in ranges, never whole in memory
        h.update(await backend.load(plan.key, offset=offset,
                                    length=min(LEGACY_TAIL, info.size - offset)))
    entry = Entry(rec.path, 0, info.size, h.hexdigest(), rec.size, rec.mtime_ns, rec.about)
    # Its lock as the object's metadata says (the store made the lock from it).
    return manifest.build(plan, [manifest.member_line(entry, member_name(rec.path))],
                          retention=manifest_fields(info.metadata))


async def manifest_of_bundle(backend: Backend, key: str, size: int,
                             bundle_id: str | None = None) -> bytes | None:
    """A bundle's manifest from the store: its trailer, then the range it names."""
    if size >= manifest.TAIL:
        tail = await backend.load(key, offset=size - manifest.TAIL, length=manifest.TAIL)
        where = manifest.read_trailer(tail)
        if where is not None:
            offset, length = where
            return await backend.load(key, offset=offset, length=length)
    if bundle_id is None:
        return None
    start = max(0, size - LEGACY_TAIL)  # a bundle from before the trailer
    raw = manifest.find_in_tar_tail(await backend.load(key, offset=start), bundle_id)
    if raw is None and start:
        raw = manifest.find_in_tar_tail(await backend.load(key), bundle_id)
    return raw
