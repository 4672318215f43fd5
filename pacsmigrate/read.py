"""Read stage: open each file once, read it (whole when small), hash it, parse its header.

Runs in a pool thread over a slice of one directory's files, so threads hand the GIL over
per slice, not per file. Small files (up to `hold_max`) are read whole once and carried to
their bundle; larger ones give their header only and are read again when packed.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import blake3

from .classify import describe
from .filters import EVERYTHING, Filters
from .header import Header, parse
from .records import Member, Problem
from .source import HASH_CHUNK, open_checked, read_exact, read_whole

READ_ATTEMPTS = 3
VANISHED = "vanished before read"
KEPT_CHANGING = "kept changing while being read"


class Recorded(Protocol):
    """What the index recorded of files (Checkpoint, or readchild.IndexLookup)."""

    def migrated(self, paths: list[bytes]) -> list[tuple[int, int] | None]: ...


@dataclass(frozen=True)
class ReadOptions:
    """How the read stage treats each file."""

    secret: bytes
    hold_max: int = 2 << 20  # files up to this size are read whole once
    header_bytes: int = 32 << 10  # what is read first of larger files for their header
    dry_run: bool = False  # hash every byte, keep none
    skip_migrated: bool = False  # the index has rows: skip files it holds unchanged
    budget: int = 8 << 20  # bytes one call reads before it hands the rest back
    filters: Filters = EVERYTHING  # which files this run takes (filters.py)


@dataclass
class ReadResult:
    """One slice of a directory, read: members in listing order, problems, counts."""

    directory: bytes
    members: list[Member] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rest: list[bytes] = field(default_factory=list)  # names not read yet (budget spent)
    listed: int = 0  # regular files (by the listing) this slice handled
    seen: int = 0  # of them, read or found unchanged
    seen_bytes: int = 0
    migrated: int = 0  # unchanged since an earlier run stored them
    held: int = 0  # bytes of file data carried in members
    filtered: Counter[str] = field(default_factory=Counter)  # left out, by reason


def read_files(directory: bytes, names: list[bytes], opts: ReadOptions,
               cp: Recorded | None = None, *, budget: int | None = None) -> ReadResult:
    """Read the named files of one directory (runs in a pool thread).

    Stops once `budget` bytes (default: opts.budget) are held; `rest` names the others.
    """
    budget = opts.budget if budget is None else budget
    out = ReadResult(directory)
    paths = [directory + b"/" + n for n in names]
    known = cp.migrated(paths) if opts.skip_migrated and cp is not None else None
    by_path = opts.filters.include or opts.filters.exclude
    for i, path in enumerate(paths):
        if out.held >= budget and i:
            out.rest = names[i:]
            break
        out.listed += 1
        if by_path and (why := opts.filters.path(path)) is not None:
            out.filtered[why] += 1
            out.seen += 1
            continue
        got = _read_one(path, opts, None if known is None else known[i], out)
        if isinstance(got, Member):
            out.members.append(got)
            if got.data is not None:
                out.held += got.size
        elif isinstance(got, Problem):
            out.problems.append(got)
    return out


def _unchanged(path: bytes, recorded: tuple[int, int], out: ReadResult) -> bool:
    """A file the index holds, found by lstat as it was recorded (a regular file of the
    same size and mtime): counted as migrated without being opened. One metadata call in
    place of open, fstat and close: what a re-run or a nightly run spends on each unchanged
    file, a round trip or three on a NAS. Anything else (changed, gone, a link, an error)
    goes the usual way, through open_checked."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != recorded:
        return False
    _count_migrated(out, st.st_size)
    return True


def _count_migrated(out: ReadResult, size: int) -> None:
    out.seen += 1
    out.seen_bytes += size
    out.migrated += 1


def _read_one(path: bytes, opts: ReadOptions, recorded: tuple[int, int] | None,
              out: ReadResult) -> Member | Problem | None:
    if recorded is not None and _unchanged(path, recorded, out):
        return None
    for _ in range(READ_ATTEMPTS):
        opened = open_checked(path, vanished=VANISHED)
        if isinstance(opened, Problem):
            return opened
        fd, before = opened
        try:
            size, mtime = before.st_size, before.st_mtime_ns
            if recorded == (size, mtime):
                _count_migrated(out, size)
                return None
            if opts.filters.by_age and (why := opts.filters.age(mtime)) is not None:
                out.filtered[why] += 1
                out.seen += 1
                out.seen_bytes += size
                return None
            got = _contents(fd, path, size, opts)
            after = os.fstat(fd)
        except OSError as exc:
            return Problem(path, "unreadable", exc.strerror or str(exc), final=False)
        finally:
            os.close(fd)
        if after.st_size != size or after.st_mtime_ns != mtime or got is None:
            continue  # changed while read: again, from a fresh open
        header, digest, data = got
        out.seen += 1
        out.seen_bytes += size
        about = describe(path, header, secret=opts.secret)
        if opts.filters.by_date and (why := opts.filters.study(about.study_date)) is not None:
            out.filtered[why] += 1
            return None
        return Member(path, size, mtime, about, digest, None if opts.dry_run else data)
    return Problem(path, KEPT_CHANGING, final=False)


def _contents(fd: int, path: bytes, size: int, opts: ReadOptions
              ) -> tuple[Header, str, bytes | None] | None:
    """(header, blake3, data) of an open file; None when its length was not `size`."""
    if size <= opts.hold_max:
        data = read_whole(fd, size)
        if len(data) != size:
            return None
        return parse(data, size), blake3.blake3(data).hexdigest(), data
    prefix = read_exact(fd, opts.header_bytes)
    with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
        header = parse(prefix, size, f)  # reads further only when the header needs it
    digest = ""
    if opts.dry_run:  # the dry run hashes every byte; packing hashes what it sends
        os.lseek(fd, 0, os.SEEK_SET)
        h = blake3.blake3()
        total = 0
        while chunk := os.read(fd, HASH_CHUNK):
            h.update(chunk)
            total += len(chunk)
        if total != size:
            return None
        digest = h.hexdigest()
    return header, digest, None
