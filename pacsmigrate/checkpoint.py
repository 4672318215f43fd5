"""The resumable LMDB checkpoint: its tables, and the intent -> upload -> commit protocol.

Tables (named LMDB databases); path keys are raw path bytes, or a hash for long paths:
    meta      name -> JSON              run configuration, key secret, format, object ids
    intents   object key -> JSON        written before the first byte of an upload is sent
    objects   object key -> JSON        acknowledged by the store (size, ETag, its number)
    objkeys   number (4 bytes BE) -> object key
    index     path -> row (rows.py)     the RIS path -> object index
    sop       packed SOPInstanceUID -> path
    soplog    sequence number (8 bytes BE) -> UID and path   sop rows not merged yet
              (soplog.py: commits of spread UIDs append, the end of a run merges)
    problems  path -> JSON Problem      not migrated (yet), or skipped, with the reason
    plan      path -> row (NO_OBJECT)   what the last dry run read, with the blake3
    spill     group 0 path -> row        files of scattered studies, packed after the walk
    groups    group -> ''                studies planned or stored (their count)
    content   [4 bytes of the study] blake3 (32 bytes) -> number, offset, length, zstd,
              lock (4+8+8+1+4+1)        where committed content is stored (deduplication;
                                        tables.content_key; meta content_keys)
    retention u:UID or a:ACCESSION -> years TAB label   the last run's --retention-map
    conflicts path -> JSON              files whose SOPInstanceUID another file with other
                                        bytes has too (both kept)

The protocol: `put_intents` (write-ahead) -> the upload -> the store acknowledges ->
`commit_objects` records the object, its rows and drops its intent in one transaction. A
run that finds intents settles them first (`commit.reconcile`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from . import rows
from .errors import StateError
from .lmdbfile import LmdbFile, rows_within
from .paths import from_fields
from .records import (
    DICOM,
    FILE,
    BundlePlan,
    Problem,
    StoredObject,
)
from .retention import lock_of
from .soplog import SPILL, SopTable
from .statemerge import MergeTables
from .stateread import OBJECT_NUMBER, ReadBack, migrated_in
from .staterepair import RepairTables
from .tables import (
    BY_STUDY,
    CONTENT_KEYS,
    ContentTable,
    PlanTable,
    RetentionTable,
    RunsTable,
    SpillTable,
    path_key,
    spill_key,
)

T = TypeVar("T")

# The state's format, written by every run; a state of a newer one is refused (an older
# pacsmigrate could miss what it keeps where). 3: SOP rows through soplog.py's log.
FORMAT = 3
# Pages of the hash-keyed content table one commit may dirty: 16 MiB.
COMMIT_PAGES = 4096
_DBS = ("meta", "intents", "objects", "objkeys", "index", "sop", "problems", "plan",
        "spill", "groups", "content", "conflicts", "retention", "soplog")


class Checkpoint(MergeTables, RepairTables, ReadBack, RunsTable, SpillTable, PlanTable,
                 RetentionTable, ContentTable, SopTable, LmdbFile):
    """The state's tables and the intent -> upload -> commit protocol (see above).

    Lookups for the read stage (`migrated`, `planned_hashes`) may run in any thread.
    """

    TABLES = _DBS
    LEFTOVERS = (*LmdbFile.LEFTOVERS, SPILL)

    def __init__(self, state_dir: Path, *, readonly: bool = False, idle: bool = False) -> None:
        super().__init__(state_dir, readonly=readonly, idle=idle)
        self._keys: dict[int, str] = {}  # object number -> key, for decoding rows
        self._locks: dict[str, tuple[str, str]] = {}  # object key -> its lock, likewise
        self._commit_files: int | None = None
        written = self.get_meta("format")
        if isinstance(written, int) and written > FORMAT:
            self.close()
            raise StateError(f"state directory {state_dir} was written by a newer pacsmigrate "
                             f"(state format {written}; this version reads {FORMAT} and "
                             "older): use that version or a newer one")
        if self.get_meta(CONTENT_KEYS) != BY_STUDY:
            if not readonly and self.counts()["content"] == 0:
                self.put_meta(CONTENT_KEYS, BY_STUDY)
            else:  # a state made before content_key: its rows may be keyed by digest
                self.bare_content = True
        if not readonly:
            with self.env.begin() as txn:
                self._commit_files = self._files_within(txn)

    def _files_within(self, txn: lmdb.Transaction) -> int | None:
        # (the sop table takes random UIDs through its log, at the end of a run; the
        # commits it takes at once are clustered, a page for many rows: soplog.py)
        return rows_within(COMMIT_PAGES, [txn.stat(self.db["content"])["leaf_pages"]])

    def commit_files(self) -> int | None:
        """Files one `commit_objects` should hold at most, for its dirty pages (see
        lmdbfile.rows_within) to stay under COMMIT_PAGES as the tables grow; None: any."""
        return self._commit_files

    # -- meta -------------------------------------------------------------------------
    def get_meta(self, name: str) -> Any:
        with self.env.begin(db=self.db["meta"]) as txn:
            raw = txn.get(name.encode())
        return None if raw is None else json.loads(raw)

    def put_meta(self, name: str, value: Any) -> None:
        self._write(lambda txn: txn.put(name.encode(), json.dumps(value).encode(),
                                        db=self.db["meta"]))

    # -- lookups for the read stage (any thread) ----------------------------------------
    def _lookup(self, name: str, paths: Iterable[bytes], fn: Callable[[bytes, bytes], T]
                ) -> list[T | None]:
        with self.env.begin(db=self.db[name]) as txn:
            return [None if (raw := txn.get(path_key(p))) is None else fn(p, raw)
                    for p in paths]

    def migrated(self, paths: Iterable[bytes]) -> list[tuple[int, int] | None]:
        """(size, mtime_ns) the index recorded for each path, or None."""
        with self.env.begin(db=self.db["index"]) as txn:
            return migrated_in(txn, paths)

    def planned_hashes(self, paths: Iterable[bytes]) -> list[tuple[int, int, str] | None]:
        """(size, mtime_ns, blake3) the last dry run read for each path, or None."""
        def planned(p: bytes, raw: bytes) -> tuple[int, int, str]:
            e, _ = rows.decode(p, raw)
            return e.size, e.mtime_ns, e.blake3
        return self._lookup("plan", paths, planned)

    # -- problems and the dry run's plan ------------------------------------------------
    def record_problems(self, problems: list[Problem]) -> None:
        def write(txn: lmdb.Transaction) -> None:
            for p in problems:
                txn.put(path_key(p.path), json.dumps(p.to_json()).encode(),
                        db=self.db["problems"])
        self._write(write)

    def clear(self, *names: str) -> None:
        """Empty tables (the spill at a run's start, the plan at a dry run's)."""
        def write(txn: lmdb.Transaction) -> None:
            for name in names:
                txn.drop(self.db[name], delete=False)
        self._write(write)

    # -- intents and commits ----------------------------------------------------------
    def put_intents(self, plans: list[BundlePlan]) -> None:
        """Write-ahead: the keys are recorded before any byte goes to the store."""
        def write(txn: lmdb.Transaction) -> None:
            for plan in plans:
                value: dict[str, Any] = {"key": plan.key, "kind": plan.kind,
                                         "group": plan.group, "bundle_id": plan.bundle_id}
                if plan.kind == FILE:  # a raw object has no manifest inside it
                    m = plan.members[0]
                    value["member"] = {"path": m.path.hex(), "size": m.size,
                                       "mtime_ns": m.mtime_ns, "about": rows.about_json(m.about)}
                txn.put(plan.key.encode(), json.dumps(value).encode(), db=self.db["intents"])
        self._write(write)

    def intents(self) -> list[BundlePlan]:
        plans = []
        with self.env.begin(db=self.db["intents"]) as txn:
            for _, v in txn.cursor():
                plans.append(rows.intent_plan(json.loads(v)))
        return plans

    def drop_intent(self, key: str) -> None:
        self._write(lambda txn: txn.delete(key.encode(), db=self.db["intents"]))

    def commit_objects(self, objects: list[StoredObject]) -> None:
        """One transaction: acknowledged objects, their index rows, their intents gone."""
        def write(txn: lmdb.Transaction) -> None:
            meta, index, problems, plan = (self.db[n] for n in
                                           ("meta", "index", "problems", "plan"))
            raw = txn.get(b"next_object", db=meta)
            next_id = int(raw) if raw is not None else 1
            # Cleanups only where there is something to clean (the usual run has none).
            planned = txn.stat(plan)["entries"] > 0
            spilled = txn.stat(self.db["spill"])["entries"] > 0
            troubled = txn.stat(problems)["entries"] > 0
            dedup = json.loads(bytes(txn.get(b"dedup", b"[0, 0]", db=meta)))

            def number_of(key: str, *, committing: bool) -> int:
                """An object's number: kept from its record, or from a duplicate that named
                it before it was committed (in a rebuild: `id:KEY` in meta), else the next."""
                nonlocal next_id
                old = txn.get(key.encode(), db=self.db["objects"])
                if old is not None and (number := json.loads(bytes(old)).get("id")):
                    return int(number)
                early = txn.get(b"id:" + key.encode(), db=meta)
                if early is not None:
                    if committing:
                        txn.delete(b"id:" + key.encode(), db=meta)
                    return int(early)
                number, next_id = next_id, next_id + 1
                txn.put(OBJECT_NUMBER.pack(number), key.encode(), db=self.db["objkeys"])
                if not committing:
                    txn.put(b"id:" + key.encode(), str(number).encode(), db=meta)
                return number

            # Rows go in per table with putmulti: one call a table and object, not one a
            # row (each LMDB call from Python costs a GIL hand-off and a frame).
            sops: list[tuple[bytes, bytes]] = []  # the commit's, in order (soplog.py)
            for obj in objects:
                key = obj.key.encode()
                number = number_of(obj.key, committing=True)
                txn.put(OBJECT_NUMBER.pack(number), key, db=self.db["objkeys"])
                txn.put(key, json.dumps(rows.object_json(obj, number)).encode(),
                        db=self.db["objects"])
                lock = lock_of(obj.retention)
                # Only files of studies with files in the spill can be there (one lookup a
                # study, not one a file).
                spilled_here = self.spilled_in(txn, {e.about.group for e in obj.entries}) \
                    if spilled else set()
                index_rows, contents = [], []
                for e in obj.entries:
                    k = path_key(e.path)
                    digest = bytes.fromhex(e.blake3) if e.blake3 else b""
                    # packed once for the row and the SOP table (rows.packed_uid's form)
                    sop = rows.pack_once(e.about.sop_uid) if e.about.sop_uid else None
                    if e.duplicate_of:
                        where = number if e.duplicate_of == obj.key else number_of(
                            e.duplicate_of, committing=False)
                        dedup[0] += 1
                        dedup[1] += e.length
                    else:
                        where = number
                        if digest and e.length:
                            contents.append((e, digest))
                    index_rows.append((k, rows.encode(e, where, long_path=k is not e.path,
                                                      sop=sop, digest=digest)))
                    if sop is not None:
                        sops.append((sop[2:502], e.path))
                    if troubled:
                        txn.delete(k, db=problems)
                    if planned:
                        txn.delete(k, db=plan)
                    if e.about.group in spilled_here:
                        txn.delete(spill_key(e.about.group, e.path), db=self.db["spill"])
                txn.cursor(db=index).putmulti(index_rows)
                if troubled:  # folders this run listed (an unreadable one, readable again)
                    for d in _folders_of(e.path for e in obj.entries):
                        txn.delete(path_key(d), db=problems)
                self._note_contents(txn, contents, number, lock, alone=obj.kind == FILE)
                txn.delete(key, db=self.db["intents"])
                # The studies it holds (a pack holds several).
                for g in {e.about.group for e in obj.entries if e.about.status == DICOM}:
                    txn.put(g.encode(), b"", db=self.db["groups"])
            self.put_sops(txn, sops)
            txn.put(b"next_object", str(next_id).encode(), db=meta)
            txn.put(b"dedup", json.dumps(dedup).encode(), db=meta)
            self._commit_files = self._files_within(txn)
        self._write(write)

    def deduplicated(self) -> tuple[int, int]:
        """(files, bytes) stored once for several files, over the whole state."""
        files, nbytes = self.get_meta("dedup") or (0, 0)
        return int(files), int(nbytes)

    def set_etags(self, etags: dict[str, str]) -> None:
        """A replica's objects carry the ETags its own store gave (`replicate`)."""
        def write(txn: lmdb.Transaction) -> None:
            db = self.db["objects"]
            for key, etag in etags.items():
                raw = txn.get(key.encode(), db=db)
                if raw is None:
                    continue  # the store descriptor or a sidecar: not an indexed object
                record = json.loads(bytes(raw))
                record["etag"] = etag
                txn.put(key.encode(), json.dumps(record).encode(), db=db)
        self._write(write)

    def object_record(self, key: str) -> dict[str, Any] | None:
        with self.env.begin(db=self.db["objects"]) as txn:
            raw = txn.get(key.encode())
        return None if raw is None else json.loads(raw)

    def has_object(self, key: str) -> bool:
        with self.env.begin(db=self.db["objects"]) as txn:
            return txn.get(key.encode()) is not None

    # -- reading back -----------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.env.begin() as txn:
            return {name: (txn.stat(self.db[name])["entries"] if self.db[name] is not None
                           else 0) for name in _DBS if name not in ("meta", "objkeys", "soplog")}

    def group_entries(self) -> int:
        """Studies planned or stored in this state."""
        return self.counts()["groups"]

    def settle_vanished(self) -> int:
        """Open problems whose path is gone now become deliberate skips ("vanished").

        A file that failed (unreadable, kept changing) and was then deleted must not keep
        every later run from finishing.
        """
        gone = [Problem(from_fields(v["source_path"], v["source_path_b64"]),
                        "vanished after an earlier failure", v["reason"])
                for _, v in self.iter_db("problems")
                if not v["final"] and not os.path.lexists(
                    from_fields(v["source_path"], v["source_path_b64"]))]
        if gone:
            self.record_problems(gone)
        return len(gone)

    def open_problems(self) -> int:
        """Files recorded as not migrated for a reason that is not a deliberate skip."""
        return sum(1 for _, v in self.iter_db("problems") if not v["final"])


def _folders_of(paths: Iterable[bytes]) -> set[bytes]:
    """Every folder above these files: the walk that found a file listed each of them.
    (A commit's files share a few folders: each file costs one rpartition, each folder
    its ancestors once.)"""
    out: set[bytes] = set()
    for d in {p.rpartition(b"/")[0] for p in paths}:
        while d and d not in out:
            out.add(d)
            d = d.rpartition(b"/")[0]
    return out

