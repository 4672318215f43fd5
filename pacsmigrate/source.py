"""Read-only access to source files: never following links, never writing, never blocking."""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

import blake3

from .records import Problem

_O_NOATIME = getattr(os, "O_NOATIME", 0)
HASH_CHUNK = 1 << 20


def open_source(path: bytes) -> int:
    """Open read-only, never following a link; without touching atime when we may.

    O_NONBLOCK: a path swapped for a FIFO since the scan must not hang a reader thread
    (regular files ignore it); callers check S_ISREG on the open descriptor.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags | _O_NOATIME)
    except PermissionError:
        if not _O_NOATIME:
            raise
        return os.open(path, flags)  # O_NOATIME needs ownership; read-only is what matters


def open_regular(path: bytes, *, vanished: str, buffering: int = 0
                 ) -> tuple[BinaryIO, os.stat_result] | Problem:
    """The open file and its fstat, or the Problem that says why it is not a regular file.

    One place decides what each failure means, for every stage that reads sources:
    gone (deliberate skip, reason `vanished`), a symlink or a directory now (skip, as the
    scan would have), a path too long for the kernel (skip, listed), else unreadable (the
    run must come back to it).
    """
    try:
        fd = open_source(path)
    except FileNotFoundError:
        return Problem(path, vanished)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Problem(path, "symlink not followed")
        if exc.errno == errno.ENAMETOOLONG:
            return Problem(path, "path too long to open", exc.strerror or "")
        if exc.errno == errno.EISDIR:
            return Problem(path, "not a regular file any more")
        return Problem(path, "unreadable", exc.strerror or str(exc), final=False)
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        return Problem(path, "unreadable", exc.strerror or str(exc), final=False)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return Problem(path, "not a regular file any more")
    return os.fdopen(fd, "rb", buffering=buffering), st


def hash_file(f: BinaryIO) -> tuple[str, int]:
    """blake3 (hex) of an open file from its current position to the end, and bytes read."""
    h = blake3.blake3()
    n = 0
    while chunk := f.read(HASH_CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n
