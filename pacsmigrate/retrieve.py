"""Read migrated instances back by original path or SOPInstanceUID: range GETs, blake3 checked."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import blake3

from .access import Opened, open_migration
from .backends.base import Backend
from .checkpoint import Checkpoint
from .config import MiB
from .encoding import decode
from .errors import ConfigError, IntegrityError, NotInIndexError
from .index import find_row
from .paths import shown

STREAM_CHUNK = 8 * MiB
PARTIAL_NAME_MAX = 255 - len(".") - len(".pacsmigrate-partial")  # NAME_MAX is 255 bytes


def lookup(cp: Checkpoint, *, path: str | bytes | None = None, sop: str | None = None,
           exact: bool = False) -> dict[str, Any]:
    """The index row for a path (see index.find_row) or a SOPInstanceUID."""
    if sop is not None:
        paths = cp.paths_for_sop(sop)
        if len(paths) > 1:  # a re-sent or edited instance: which one is meant?
            raise ConfigError(f"{len(paths)} migrated files with other bytes have that "
                              "SOPInstanceUID (a re-sent or edited instance): get one by "
                              f"its path: {', '.join(shown(p) for p in paths)}")
        row = cp.index_row(paths[0]) if paths else None
        if row is None:
            raise NotInIndexError("no migrated instance has that SOPInstanceUID")
        return row
    assert path is not None
    found = find_row(cp, path, exact=exact)
    if found is None:
        raise NotInIndexError(f"not in the index: {shown(os.fsencode(path))}")
    return found[1]


async def read_row(backend: Backend, row: dict[str, Any]) -> bytes:
    """One range GET; the bytes are returned only if their blake3 is the index's."""
    length = int(row["length"])
    data = await backend.load(row["key"], offset=int(row["offset"]), length=length) \
        if length else b""
    data = decode(data, row.get("encoding", ""), size=int(row["size"]))
    if blake3.blake3(data).hexdigest() != row["blake3"]:
        raise IntegrityError(f"blake3 mismatch reading {row['key']} at offset {row['offset']}")
    return data


async def fetch(cp: Checkpoint, backend: Backend, path: bytes) -> bytes:
    """The file's bytes as migrated, verified against the index row before returning."""
    return await read_row(backend, lookup(cp, path=path))


class Archive:
    """A migrated archive, for viewer gateways and scripts: `async with pacsmigrate.open(...)`."""

    def __init__(self, opened: Opened) -> None:
        self._m = opened

    def locate(self, path: str | bytes | None = None, *, sop: str | None = None
               ) -> dict[str, Any]:
        """The index row (key, offset, length, blake3, UIDs) of one instance."""
        return lookup(self._m.cp, path=path, sop=sop)

    async def read(self, path: str | bytes | None = None, *, sop: str | None = None) -> bytes:
        """The whole instance, verified."""
        return await read_row(self._m.backend, self.locate(path, sop=sop))

    async def stream(self, path: str | bytes | None = None, *, sop: str | None = None,
                     chunk: int = STREAM_CHUNK) -> AsyncIterator[bytes]:
        """The instance in chunks (for large multi-frame files); see stream_row."""
        async for data in stream_row(self._m.backend, self.locate(path, sop=sop),
                                     chunk=chunk):
            yield data


async def stream_row(backend: Backend, row: dict[str, Any], *, chunk: int = STREAM_CHUNK
                     ) -> AsyncIterator[bytes]:
    """An index row's bytes in range GETs of `chunk`, one held back: the blake3 is checked
    before the last chunk is given, and IntegrityError raised then, so a consumer must
    discard what it got if the iteration fails (or cut the answer it was sending)."""
    if row.get("encoding"):  # a frame is decoded whole (only members up to
        data = await read_row(backend, row)  # --large-file are compressed)
        for i in range(0, len(data), chunk):
            yield data[i:i + chunk]
        return
    h = blake3.blake3()
    start, end = int(row["offset"]), int(row["offset"]) + int(row["length"])
    pos, held = start, None
    while pos < end:
        data = await backend.load(row["key"], offset=pos, length=min(chunk, end - pos))
        if not data:
            raise IntegrityError(f"{row['key']} ends before the member at offset {start} does")
        await asyncio.to_thread(h.update, data)
        pos += len(data)
        if held is not None:
            yield held
        held = data
    if h.hexdigest() != row["blake3"]:
        raise IntegrityError(f"blake3 mismatch reading {row['key']} at offset {start}")
    if held is not None:
        yield held


@asynccontextmanager
async def open_archive(state_dir: str | Path, *, endpoint_url: str | None = None
                       ) -> AsyncIterator[Archive]:
    """Open a migration's state read-only with its store; see Archive."""
    async with open_migration(Path(state_dir), endpoint_url=endpoint_url) as opened:
        yield Archive(opened)


async def save_verified(backend: Backend, row: dict[str, Any], target: Path) -> int:
    """Write one instance to target, only once its bytes are verified (see write_file)."""
    data = await read_row(backend, row)
    await asyncio.to_thread(write_file, target, data, mtime_ns=int(row["mtime_ns"]))
    return len(data)


def write_file(target: Path, data: bytes, *, mtime_ns: int) -> None:
    """Temporary file, fsync, original mtime, then rename: never a half-written target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(partial_name(target.name))
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a whole copy of an image: never left behind
        raise


def partial_name(name: str) -> str:
    """The temporary name a file is written under: `.NAME.pacsmigrate-partial`, within the
    255 bytes a name may have (a long NAME is cut and told apart by its hash)."""
    raw = os.fsencode(name)
    if len(raw) > PARTIAL_NAME_MAX:
        raw = raw[:PARTIAL_NAME_MAX - 17] + b"~" + blake3.blake3(raw).hexdigest()[:16].encode()
    return f".{os.fsdecode(raw)}.pacsmigrate-partial"
