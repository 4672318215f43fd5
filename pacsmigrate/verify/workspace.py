"""The --deep rows, sorted by object on disk so any number of them fits."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StateError


@dataclass(frozen=True, slots=True)
class Member:
    offset: int
    length: int
    blake3: str
    path: bytes
    encoding: str = ""

    @property
    def end(self) -> int:
        return self.offset + self.length


class ByObject:
    """The --deep rows, sorted by (object, offset) in an on-disk SQLite table.

    The index is in path order and a study's files are scattered over it; grouping rows by
    object in RAM would not scale to 100M rows, so SQLite sorts them on disk.
    """

    def __init__(self, directory: Path | None) -> None:
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="pacsmigrate-verify-", dir=directory))
        except OSError:
            self.dir = Path(tempfile.mkdtemp(prefix="pacsmigrate-verify-"))
        try:
            self.db = sqlite3.connect(self.dir / "rows.sqlite", isolation_level=None)
            for sql in (
                "PRAGMA journal_mode=OFF", "PRAGMA synchronous=OFF",
                "PRAGMA cache_size=-65536",
                ("CREATE TABLE rows (key TEXT, offset INTEGER, length INTEGER, blake3 TEXT, "
                 "path BLOB, encoding TEXT, PRIMARY KEY (key, offset, path)) WITHOUT ROWID"),
                "CREATE TABLE missing (key TEXT PRIMARY KEY) WITHOUT ROWID",
            ):
                self.db.execute(sql)
        except sqlite3.Error as exc:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise StateError(f"cannot create verify workspace in {self.dir}: {exc}") from exc

    def add(self, rows: list[dict[str, Any]]) -> None:
        self._write("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?, ?)",
                    [(r["key"], int(r["offset"]), int(r["length"]), r["blake3"],
                      bytes.fromhex(r["path_hex"]), r.get("encoding", "")) for r in rows])

    def mark_missing(self, key: str) -> None:
        self._write("INSERT OR IGNORE INTO missing VALUES (?)", [(key,)])

    def _write(self, sql: str, values: list[tuple[Any, ...]]) -> None:
        try:
            self.db.execute("BEGIN")
            self.db.executemany(sql, values)
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateError(f"verify workspace in {self.dir}: {exc}") from exc

    def is_missing(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM missing WHERE key = ?", (key,)).fetchone() is not None

    def objects(self) -> Iterator[tuple[str, list[Member]]]:
        cur = self.db.execute("SELECT key, offset, length, blake3, path, encoding FROM rows "
                              "ORDER BY key, offset, path")
        key: str | None = None
        members: list[Member] = []
        while batch := cur.fetchmany(1000):
            for k, offset, length, digest, path, enc in batch:
                if k != key:
                    if key is not None:
                        yield key, members
                    key, members = k, []
                members.append(Member(offset, length, digest, path, enc))
        if key is not None:
            yield key, members

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)
