"""SQLite files we write whole (the index export, the DICOMweb catalogue): never half."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a scratch file beside `path`, renamed onto it when the block ends
    well, removed when it fails: a reader sees the old file or the new one, never a part.
    No journal and no syncs: a crash leaves only the scratch file, made anew next time."""
    # Named by its writer: two processes making the same file never write one scratch file
    # (the one renamed last wins whole); those of writers gone are removed.
    _sweep(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.pacsmigrate-partial")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        yield con
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()
    os.replace(tmp, path)


def _sweep(path: Path) -> None:
    for left in path.parent.glob(f".{glob.escape(path.name)}.*pacsmigrate-partial"):
        pid = left.name[len(path.name) + 2:].partition(".")[0]
        if pid.isdigit() and alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            left.unlink()


def alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a scratch file's or a temporary file's
    writer, named in the file's name)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True
