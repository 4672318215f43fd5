"""Pack a plan's files into a consistent tar bundle (or stream one large file), in parts."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3

from . import manifest
from .classify import catalogued, classify, header_from_bytes
from .errors import SourceChangedError
from .paths import member_name
from .records import BundlePlan, Catalogued, FileEntry, Problem
from .source import open_regular

BLOCK = 512
READ_ATTEMPTS = 3
VANISHED = "vanished before packing"


@dataclass
class PackResult:
    """What packing found: the manifest members, and files that could not go in."""

    members: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    moved: list[Catalogued] = field(default_factory=list)  # changed study: re-catalogue
    reread: int = 0  # files changed since cataloguing, packed from a fresh read
    # Same size and mtime as at the dry run, different bytes: changed in place, or rot.
    dry_run_mismatch: list[bytes] = field(default_factory=list)
    reread_bytes: int = 0
    size: int = 0
    manifest: bytes = b""


def _stable_read(path: bytes) -> tuple[bytes, os.stat_result] | Problem:
    """The whole file, read between two identical fstat()s, or why that was impossible."""
    for _ in range(READ_ATTEMPTS):
        opened = open_regular(path, vanished=VANISHED)
        if isinstance(opened, Problem):
            return opened
        f, before = opened
        try:
            with f:
                data = f.read(before.st_size + 1)
                after = os.fstat(f.fileno())
        except OSError as exc:
            return Problem(path, "unreadable", exc.strerror or str(exc), final=False)
        if (len(data) == before.st_size == after.st_size
                and before.st_mtime_ns == after.st_mtime_ns):
            return data, after
    return Problem(path, "kept changing while being read", final=False)


def _refresh(rec: Catalogued, data: bytes, st: os.stat_result, *, secret: bytes) -> Catalogued:
    """The record for bytes read now; re-parsed only when the file changed since cataloguing."""
    if st.st_size == rec.size and st.st_mtime_ns == rec.mtime_ns:
        return rec
    now = FileEntry(rec.path, st.st_size, st.st_mtime_ns)
    return catalogued(now, header_from_bytes(data), secret=secret)


class _Parts:
    """Cuts a byte stream into fixed-size parts without copying more than one part."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.buf = bytearray()
        self.offset = 0

    def add(self, data: bytes) -> Iterator[bytes]:
        self.buf += data
        self.offset += len(data)
        while len(self.buf) >= self.part_size:
            yield bytes(self.buf[:self.part_size])
            del self.buf[:self.part_size]

    def rest(self) -> Iterator[bytes]:
        if self.buf:
            yield bytes(self.buf)
        self.buf = bytearray()


def _tar_header(name: str, size: int, mtime_ns: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime_ns // 1_000_000_000
    info.mode = 0o644
    info.uname = info.gname = ""
    # PAX keeps long and non-UTF-8 names exact (hdrcharset=BINARY), readable by GNU tar.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _pad(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def tar_parts(plan: BundlePlan, result: PackResult, *, part_size: int,
              secret: bytes) -> Iterator[bytes]:
    """Yield the bundle in part_size pieces; fill `result` as members are written.

    Each member is read whole between two equal fstat()s before its header goes out, so
    a member is never half-old. A file that changed since cataloguing is re-parsed; if it
    now belongs to another study it is handed back for re-cataloguing, not packed here.
    """
    parts = _Parts(part_size)
    for rec in plan.members:
        got = _stable_read(rec.path)
        if isinstance(got, Problem):
            result.problems.append(got)
            continue
        data, st = got
        now = _refresh(rec, data, st, secret=secret)
        if now is not rec:
            result.reread += 1
            result.reread_bytes += len(data)
            if now.group != plan.group:
                result.moved.append(now)
                continue
        digest = blake3.blake3(data).hexdigest()
        if now.blake3 and now.blake3 != digest:
            result.dry_run_mismatch.append(rec.path)
        name = member_name(rec.path)
        header = _tar_header(name, len(data), now.mtime_ns)
        yield from parts.add(header)
        result.members.append(manifest.member_entry(
            now, name=name, offset=parts.offset, length=len(data), digest=digest))
        yield from parts.add(data)
        yield from parts.add(_pad(len(data)))
    if not result.members:
        return
    result.manifest = manifest.build(plan, result.members)
    yield from parts.add(_tar_header(manifest.manifest_name(plan.bundle_id),
                                     len(result.manifest), 0))
    yield from parts.add(result.manifest)
    yield from parts.add(_pad(len(result.manifest)) + b"\0" * (2 * BLOCK))
    result.size = parts.offset
    yield from parts.rest()


def file_parts(plan: BundlePlan, result: PackResult, *, part_size: int,
               secret: bytes) -> Iterator[bytes]:
    """Stream one large file as its own object, hashing as it goes.

    A change during the read raises SourceChangedError, so the upload is aborted and the
    file is packed again later, never stored half-old.
    """
    rec = plan.members[0]
    opened = open_regular(rec.path, vanished=VANISHED)
    if isinstance(opened, Problem):
        result.problems.append(opened)
        return
    f, before = opened
    with f:
        now = rec
        if (before.st_size, before.st_mtime_ns) != (rec.size, rec.mtime_ns):
            fresh = classify(FileEntry(rec.path, before.st_size, before.st_mtime_ns),
                             secret=secret)
            result.reread += 1
            result.reread_bytes += before.st_size
            if isinstance(fresh, Problem):
                result.problems.append(fresh)
                return
            if fresh.group != plan.group:
                result.moved.append(fresh)
                return
            now = fresh
        h = blake3.blake3()
        total = 0
        while chunk := f.read(part_size):
            h.update(chunk)
            total += len(chunk)
            if total > before.st_size:
                break
            yield chunk
        after = os.fstat(f.fileno())
        if total != before.st_size or (after.st_size, after.st_mtime_ns) != (
                before.st_size, before.st_mtime_ns):
            raise SourceChangedError("file changed while being uploaded", path=rec.path)
    name = member_name(rec.path)
    result.members.append(manifest.member_entry(now, name=name, offset=0, length=total,
                                                digest=h.hexdigest()))
    result.manifest = manifest.build(plan, result.members)
    result.size = total
