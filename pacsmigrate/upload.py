"""Upload stage: stream a plan's parts into the store; recover objects a crash left behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import blake3

from . import faults, manifest
from .backends.base import Backend, ObjectInfo, one_chunk
from .bundle import PackResult, file_parts, tar_parts
from .errors import BackendError, ObjectExistsError, SourceChangedError
from .keys import sidecar_key
from .paths import member_name
from .records import BundlePlan

TAIL_BYTES = 8 << 20
META = {"pacsmigrate-format": "1"}


@dataclass
class Stored:
    """An object the store acknowledged, with the manifest that describes it."""

    info: ObjectInfo
    doc: dict[str, Any]
    adopted: bool = False


async def _drain(gen: Iterator[bytes], first: bytes, pool: Executor) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    yield first
    faults.point("mid-upload")
    while (chunk := await loop.run_in_executor(pool, next, gen, None)) is not None:
        yield chunk


async def upload(plan: BundlePlan, backend: Backend, pool: Executor, *,
                 secret: bytes) -> tuple[Stored | None, PackResult]:
    """Pack and store one plan. None when no member could be packed (all moved/vanished).

    Source reads run in `pool`; at most a few parts per object are in memory at once.
    """
    result = PackResult()
    make = tar_parts if plan.kind == "tar" else file_parts
    gen = make(plan, result, part_size=backend.part_size(plan.size), secret=secret)
    loop = asyncio.get_running_loop()
    try:
        first = await loop.run_in_executor(pool, next, gen, None)
        if first is None:
            return None, result
        info = await backend.save(plan.key, _drain(gen, first, pool),
                                  metadata={**META, "pacsmigrate-kind": plan.kind})
    except SourceChangedError:
        # The upload was aborted; the file stays catalogued and the next pass retries it.
        result.reread += 1
        return None, result
    except ObjectExistsError:
        # An earlier attempt stored this exact plan (deterministic key): adopt what it
        # stored. This attempt's findings are dropped; plan members the stored manifest
        # lacks stay catalogued and go into the next pass.
        return await recover(plan, backend), PackResult()
    faults.point("after-upload")
    await save_sidecar(backend, plan.key, result.manifest)
    faults.point("after-sidecar")
    return Stored(info, manifest.parse(result.manifest)), result


async def save_sidecar(backend: Backend, key: str, doc: bytes) -> None:
    """The manifest beside its object, so the store alone can rebuild the index."""
    try:
        await backend.save(sidecar_key(key), one_chunk(doc), metadata=META)
    except ObjectExistsError:
        pass  # written by the attempt that stored the object


async def recover(plan: BundlePlan, backend: Backend) -> Stored | None:
    """The manifest of an object stored by an interrupted run, or None if it is absent.

    Order of evidence: the sidecar; else the manifest inside the tar's tail; else (a raw
    large file) the object's bytes hashed afresh. A missing sidecar is written back. An
    object at our key that none of these explains is an error, never silently reused.
    """
    info = await backend.stat(plan.key)
    if info is None:
        return None
    raw = await _find_manifest(plan, backend, info)
    try:
        doc = manifest.parse(raw) if raw is not None else None
    except ValueError:
        doc = None
    if doc is None or doc.get("key") != plan.key or any(
            int(m["offset"]) + int(m["length"]) > info.size for m in doc["members"]):
        raise BackendError(f"an object not written by this migration is at {plan.key}; "
                           "move it away and re-run", key=plan.key)
    assert raw is not None
    await save_sidecar(backend, plan.key, raw)
    return Stored(info, doc, adopted=True)


async def _find_manifest(plan: BundlePlan, backend: Backend, info: ObjectInfo) -> bytes | None:
    if await backend.stat(sidecar_key(plan.key)) is not None:
        return await backend.load(sidecar_key(plan.key))
    if plan.kind == "tar":
        start = max(0, info.size - TAIL_BYTES)
        raw = manifest.find_in_tar_tail(await backend.load(plan.key, offset=start),
                                        plan.bundle_id)
        if raw is None and start:
            raw = manifest.find_in_tar_tail(await backend.load(plan.key), plan.bundle_id)
        return raw
    rec = plan.members[0]
    h = blake3.blake3()
    for offset in range(0, info.size, TAIL_BYTES):  # hashed in ranges, never whole in memory
        h.update(await backend.load(plan.key, offset=offset,
                                    length=min(TAIL_BYTES, info.size - offset)))
    entry = manifest.member_entry(rec, name=member_name(rec.path), offset=0,
                                  length=info.size, digest=h.hexdigest())
    return manifest.build(plan, [entry])
