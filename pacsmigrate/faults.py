"""Fault hooks for tests: crash points, and opens refused as a stranger's file would be.

Set PACSMIGRATE_CRASH_AT=name:n to die the n-th time the run reaches `name`. Unset (the
normal case) every call is one dict lookup. With PACSMIGRATE_CRASH_ONCE=FILE as well, only
the first process to create FILE dies (one worker of a run on Dask, once).

PACSMIGRATE_DENY_OPEN=TAIL (or `DENY_OPEN` set in-process): opening a source file or
directory whose path ends in /TAIL (a name, or `dir/name`) fails with EACCES, as a file of mode 000 does for anyone but root
(CI runs as root, where chmod cannot make a file unreadable).
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

_TARGET = os.environ.get("PACSMIGRATE_CRASH_AT", "")
_ONCE = os.environ.get("PACSMIGRATE_CRASH_ONCE", "")
_seen: Counter[str] = Counter()
DENY_OPEN = os.fsencode(os.environ.get("PACSMIGRATE_DENY_OPEN", ""))

POINTS = ("after-intent", "mid-upload", "part-uploaded", "after-upload", "after-sidecar",
          "after-commit", "mid-catalogue", "read-process", "mid-sop-merge", "mid-compact",
          "before-merge")


def point(name: str) -> None:
    """Die here if the environment asked for it (tests only)."""
    if not _TARGET:
        return
    _seen[name] += 1
    if _TARGET == f"{name}:{_seen[name]}" and _first_to_die():
        os.kill(os.getpid(), signal.SIGKILL)


def _first_to_die() -> bool:
    if not _ONCE:
        return True
    try:
        os.close(os.open(_ONCE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def check_open(path: bytes) -> None:
    """Refuse to open `path` if a test asked for it (callers test DENY_OPEN first)."""
    if path.endswith(b"/" + DENY_OPEN):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
