"""Rebuild a lost state's index from the store alone: every object's manifest is beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import keys, manifest
from .backends.base import Backend
from .checkpoint import Checkpoint
from .commit import commit
from .config import Destination
from .errors import StateError
from .progress import Bar
from .records import now_iso
from .upload import Stored


@dataclass
class RebuildResult:
    manifests: int = 0
    rows: int = 0
    superseded: int = 0  # rows replaced by a newer version of the same file
    missing_objects: list[str] = field(default_factory=list)


def _newer(row: dict[str, Any], old: dict[str, Any] | None, created: str,
           old_created: str) -> bool:
    """A file migrated twice (it changed on the NAS): the later version wins, as in the run."""
    if old is None:
        return True
    return (int(row["mtime_ns"]), created) >= (int(old["mtime_ns"]), old_created)


async def rebuild(backend: Backend, dest: Destination, cp: Checkpoint, *,
                  progress: bool = False) -> RebuildResult:
    """Read every sidecar manifest under the prefix and commit it into a fresh checkpoint."""
    if cp.counts()["objects"]:
        raise StateError(f"{cp.state_dir} already holds a migration; rebuild into a new --state")
    descriptor = dest.key(keys.DESCRIPTOR)
    if await backend.stat(descriptor) is None:
        raise StateError(f"no pacsmigrate store at {dest} (missing {descriptor})")
    secret = json.loads(await backend.load(descriptor))["key_secret"]
    cp.put_meta("config", {"dest": str(dest), "endpoint_url": dest.endpoint_url,
                           "sources": [], "created": now_iso(), "rebuilt_from_store": True})
    cp.put_meta("key_secret", secret)
    result = RebuildResult()
    bar = Bar("rebuild", total_bytes=None, total_files=None, enabled=progress)
    prefix = dest.key("")
    try:
        async for info in backend.list(f"{prefix}/" if prefix else ""):
            if not info.key.endswith(".json") or info.key == descriptor:
                continue
            doc = manifest.parse(await backend.load(info.key))
            data = await backend.stat(doc["key"])
            if data is None:
                result.missing_objects.append(doc["key"])
                continue
            rows, superseded = await _keep_newest(cp, doc)
            result.superseded += superseded
            doc = {**doc, "members": rows}
            result.rows += await commit(cp, Stored(data, doc, adopted=True))
            result.manifests += 1
            bar.update(files=len(rows))
    finally:
        bar.close()
    return result


async def _keep_newest(cp: Checkpoint, doc: dict[str, Any]
                       ) -> tuple[list[dict[str, Any]], int]:
    """Members of doc newer than what the rebuilt index holds, and how many versions lost."""
    keep = []
    superseded = 0
    for m in doc["members"]:
        path = manifest.rows({**doc, "members": [m]})[0]["path_hex"]
        old = await cp.call(cp.index_row, bytes.fromhex(path))
        old_created = ""
        if old is not None:
            old_obj = await cp.call(cp.object_record, old["key"])
            old_created = old_obj.get("created", "") if old_obj else ""
        if _newer(m, old, doc.get("created", ""), old_created):
            keep.append(m)
        superseded += old is not None
    return keep, superseded
