"""SQLite files we write whole (the index export, the DICOMweb catalogue): never half."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a scratch file beside `path`, renamed onto it when the block ends
    well, removed when it fails: a reader sees the old file or the new one, never a part.
    No journal and no syncs: a crash leaves only the scratch file, made anew next time."""
    tmp = path.with_name(f".{path.name}.pacsmigrate-partial")
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
