"""Read-only access to source files: never following links, never writing, never blocking."""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

import blake3

from . import faults
from .records import Problem

_O_NOATIME = getattr(os, "O_NOATIME", 0)
HASH_CHUNK = 1 << 20


def open_source(path: bytes) -> int:
    """Open read-only, never following a link; without touching atime when we may.

    O_NONBLOCK: a path swapped for a FIFO since the scan must not hang a reader thread
    (regular files ignore it); callers check S_ISREG on the open descriptor.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if faults.DENY_OPEN:
        faults.check_open(path)
    try:
        return os.open(path, flags | _O_NOATIME)
    except PermissionError:
        if not _O_NOATIME:
            raise
        return os.open(path, flags)  # O_NOATIME needs ownership; read-only is what matters


def open_checked(path: bytes, *, vanished: str) -> tuple[int, os.stat_result] | Problem:
    """The open descriptor and its fstat, or the Problem that says why it is not a regular
    file (the caller closes the descriptor)."""
    try:
        fd = open_source(path)
    except OSError as exc:
        return problem_for(path, exc, vanished=vanished)
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        return Problem(path, "unreadable", exc.strerror or str(exc), final=False)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return Problem(path, "not a regular file any more")
    return fd, st


def open_regular(path: bytes, *, vanished: str, buffering: int = 0
                 ) -> tuple[BinaryIO, os.stat_result] | Problem:
    """The open file and its fstat, or the Problem that says why it is not a regular file."""
    opened = open_checked(path, vanished=vanished)
    if isinstance(opened, Problem):
        return opened
    fd, st = opened
    return os.fdopen(fd, "rb", buffering=buffering), st


# Final (no re-run can open it), but not deliberate: said so in the summary and the report.
TOO_LONG = ("path too long to open (over the system's PATH_MAX: NOT migrated, nor what a "
            "folder holds; bind-mount the folder at a shorter path and migrate that)")


def problem_for(path: bytes, exc: OSError, *, vanished: str) -> Problem:
    """What a failed open of a source file means, decided in one place for every stage.

    Gone: a deliberate skip (reason `vanished`); a symlink or a directory now: skipped, as
    the scan would have; a path too long for the kernel: skipped, listed; anything else:
    unreadable, and the run must come back to it.
    """
    if isinstance(exc, FileNotFoundError):
        return Problem(path, vanished)
    if exc.errno == errno.ELOOP:
        return Problem(path, "symlink not followed")
    if exc.errno == errno.ENAMETOOLONG:
        return Problem(path, TOO_LONG, exc.strerror or "")
    if exc.errno == errno.EISDIR:
        return Problem(path, "not a regular file any more")
    return Problem(path, "unreadable", exc.strerror or str(exc), final=False)


def read_exact(fd: int, n: int) -> bytes:
    """Up to n bytes from fd, fewer only at end of file (NFS and FUSE may return short)."""
    data = os.read(fd, n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n and (more := os.read(fd, n - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_whole(fd: int, size: int) -> bytes:
    """The file's bytes as read_exact(fd, size + 1) gives them, in one read when that read
    gives exactly `size`: the caller's fstat after the read tells whether the file grew
    since (one system call less per small file than reading on to the end of file)."""
    data = os.read(fd, size + 1)
    if len(data) >= size or not data:
        return data
    return data + read_exact(fd, size + 1 - len(data))


def hash_unchanged(path: bytes, size: int, mtime_ns: int) -> str | None:
    """blake3 of a file if it is still `size` bytes of `mtime_ns` before and after the
    read, else None (it changed: it is read again when packed)."""
    try:
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            if (before.st_size, before.st_mtime_ns) != (size, mtime_ns):
                return None
            digest, n = hash_file(f)
            after = os.fstat(f.fileno())
    except OSError:
        return None
    if n != size or (after.st_size, after.st_mtime_ns) != (size, mtime_ns):
        return None
    return digest


def hash_file(f: BinaryIO) -> tuple[str, int]:
    """blake3 (hex) of an open file from its current position to the end, and bytes read."""
    h = blake3.blake3()
    n = 0
    while chunk := f.read(HASH_CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n
