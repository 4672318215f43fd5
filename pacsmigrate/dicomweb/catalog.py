"""The DICOMweb catalogue: an SQLite file made from a state's index, queried per request.

QIDO-RS answers come from here, never from a scan of the state: one table of instances
(UIDs, modality, study date, transfer syntax, and where the bytes are) with indexes on the
UIDs, and one row per study and per series with its counts. It holds no source path and no
patient data, only what the index holds. It is made once beside the state (or at
`--catalog`) and made again when the state has changed since (its LMDB file's size and
mtime are kept in it); a `migrate` running meanwhile is seen at the next start.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..lmdbfile import data_file
from ..sqlitefile import scratch_db

CATALOG_NAME = "dicomweb.sqlite"
VERSION = 2  # 2: a smaller index of places (files of version 1 are made anew)
BATCH = 5000

INSTANCE_COLUMNS = ("study", "series", "sop", "modality", "study_date", "transfer_syntax",
                    "key", "offset", "length", "blake3", "size", "encoding", "mtime_ns")

SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE instances (study TEXT NOT NULL, series TEXT NOT NULL, sop TEXT NOT NULL,
    modality TEXT, study_date TEXT, transfer_syntax TEXT, key TEXT NOT NULL,
    offset INTEGER NOT NULL, length INTEGER NOT NULL, blake3 TEXT NOT NULL,
    size INTEGER NOT NULL, encoding TEXT, mtime_ns INTEGER);
"""

# Built after the inserts: one sorted pass each. A SOPInstanceUID held by two files with
# other bytes (a re-sent or edited instance) is served as the newest (mtime) of them.
FINISH = """
DELETE FROM instances WHERE rowid IN (SELECT rowid FROM (SELECT rowid, ROW_NUMBER() OVER (
    PARTITION BY sop ORDER BY mtime_ns DESC, rowid DESC) AS n FROM instances) WHERE n > 1);
CREATE UNIQUE INDEX instances_sop ON instances (sop);
CREATE INDEX instances_place ON instances (study, series);  -- a study's are sorted then
CREATE INDEX instances_series ON instances (series);
CREATE TABLE series AS SELECT study, series, MAX(modality) AS modality,
    COUNT(*) AS instances FROM instances GROUP BY study, series;
CREATE UNIQUE INDEX series_uid ON series (study, series);
CREATE INDEX series_alone ON series (series);
CREATE TABLE studies AS SELECT i.study, MAX(i.study_date) AS study_date,
    (SELECT GROUP_CONCAT(m, '\\') FROM (SELECT DISTINCT s.modality AS m FROM series s
        WHERE s.study = i.study AND s.modality <> '' ORDER BY 1)) AS modalities,
    COUNT(DISTINCT i.series) AS series, COUNT(*) AS instances
    FROM instances i GROUP BY i.study;
CREATE UNIQUE INDEX studies_uid ON studies (study);
CREATE INDEX studies_date ON studies (study_date);
"""


@dataclass(frozen=True)
class Instance:
    """Where one instance's bytes are, and what the index knows of it."""

    study: str
    series: str
    sop: str
    modality: str
    study_date: str
    transfer_syntax: str
    key: str
    offset: int
    length: int
    blake3: str
    size: int
    encoding: str

    def row(self) -> dict[str, Any]:
        """The index row form retrieve.read_row and stream_row take."""
        return {"key": self.key, "offset": self.offset, "length": self.length,
                "blake3": self.blake3, "size": self.size, "encoding": self.encoding}


def _stamp(state_dir: Path) -> str:
    st = data_file(state_dir).stat()
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"  # a file put in its place: new inode


def _instances(cp: Checkpoint) -> Iterator[tuple[Any, ...]]:
    """DICOM rows with their three UIDs (a file that is not DICOM has no place here)."""
    for _, r in cp.iter_db("index"):
        if r.get("status", "dicom") != "dicom" or not (
                r["study_uid"] and r["series_uid"] and r["sop_uid"]):
            continue
        yield (r["study_uid"], r["series_uid"], r["sop_uid"], r["modality"], r["study_date"],
               r["transfer_syntax"], r["key"], int(r["offset"]), int(r["length"]),
               r["blake3"], int(r["size"]), r.get("encoding", ""), int(r["mtime_ns"]))


def build(cp: Checkpoint, path: Path, stamp: str) -> int:
    """Write the catalogue to a scratch file beside `path`, then rename it into place."""
    n = 0
    with scratch_db(path) as con:
        con.executescript(SCHEMA)
        insert = f"INSERT INTO instances VALUES ({', '.join('?' * len(INSTANCE_COLUMNS))})"
        rows = _instances(cp)
        con.execute("BEGIN")
        while chunk := list(islice(rows, BATCH)):
            con.executemany(insert, chunk)
            n += len(chunk)
        con.execute("COMMIT")
        con.executescript(FINISH)
        con.executemany("INSERT INTO meta VALUES (?, ?)",
                        [("version", str(VERSION)), ("state", stamp)])
    return n


def _current(path: Path, stamp: str) -> bool:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(con.execute("SELECT name, value FROM meta").fetchall())
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return meta.get("version") == str(VERSION) and meta.get("state") == stamp


def ensure(state_dir: Path, path: Path) -> bool:
    """Make the catalogue if it is missing or older than the state; True if it was made.

    The state is opened anew for it: a compaction or a --workers merge puts another file in
    the old one's place, which a state held open since the start would never see. Stamped
    before the open, so a change meanwhile only makes it again at the next look."""
    stamp = _stamp(state_dir)
    if path.exists() and _current(path, stamp):
        return False
    cp = Checkpoint(state_dir, readonly=True)
    try:
        build(cp, path, stamp)
    finally:
        cp.close()
    return True


class Catalog:
    """Read-only queries on a catalogue file; one connection per thread that asks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _con(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                  check_same_thread=False)
            con.row_factory = sqlite3.Row
            self._local.con = con
        return con

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        return self._con().execute(sql, params).fetchall()

    def instances(self, study: str, series: str | None = None, sop: str | None = None
                  ) -> list[Instance]:
        """A study's, a series' or one instance's rows, in store order (object, offset),
        so that members lying side by side in a bundle are read in one request."""
        sql = f"SELECT {', '.join(INSTANCE_COLUMNS[:-1])} FROM instances WHERE study = ?"
        params: list[Any] = [study]
        if series is not None:
            sql += " AND series = ?"
            params.append(series)
        if sop is not None:
            sql += " AND sop = ?"
            params.append(sop)
        sql += " ORDER BY series, key, offset"
        return [Instance(*r) for r in self.query(sql, params)]

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


__all__ = ["CATALOG_NAME", "Catalog", "Instance", "build", "ensure"]
