"""Reading the checkpoint's tables back (checkpoint.py describes every table): a table as
dicts in short transactions, an index row with its object's key and lock, the files of a
SOPInstanceUID, and the read stage's index lookup (`migrated_in`, also the read process's).
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lmdb

from . import rows, soplog
from .tables import path_key

OBJECT_NUMBER = struct.Struct(">I")  # an objkeys key: the object's number
# Objects whose key and lock decoding rows remembers. Rows are read in path order and a
# bundle's files sit together, so a few thousand hit as well as all; 100,000 entries held
# ~25 MB at a million files (the report's walk of the index), which grew with the tree.
DECODE_CACHE = 4096


def migrated_in(txn: lmdb.Transaction, paths: Iterable[bytes]
                ) -> list[tuple[int, int] | None]:
    """(size, mtime_ns) an index transaction holds for each path, or None (also the read
    process's lookup: readchild.IndexLookup)."""
    return [None if (raw := txn.get(path_key(p))) is None else rows.stat_of(raw)
            for p in paths]


class ReadBack:
    """Reading the tables back; mixed into Checkpoint, which opens the tables and the
    caches of object keys and locks (`_keys`, `_locks`)."""

    env: lmdb.Environment
    db: dict[str, Any]
    _keys: dict[int, str]
    _locks: dict[str, tuple[str, str]]

    def iter_db(self, name: str, *, batch: int = 2000,
                 keep: Callable[[bytes | memoryview], bool] | None = None
                 ) -> Iterator[tuple[bytes, Any]]:
        """Stream a table as dicts, in short read transactions (memory stays flat).
        `keep(raw)`: only the records it accepts, judged before they are decoded."""
        after = b""
        while True:
            chunk, last = self._range(name, after, batch, keep)
            yield from chunk
            if last is None:
                return
            after = last

    def _range(self, name: str, after: bytes, limit: int,
               keep: Callable[[bytes | memoryview], bool] | None
               ) -> tuple[list[tuple[bytes, Any]], bytes | None]:
        """The records (that `keep` accepts) among the next `limit` after key `after`,
        read in one short transaction; and the last key read, None at the table's end."""
        out: list[tuple[bytes, Any]] = []
        if self.db[name] is None:
            return out, None
        read = 0
        with self.env.begin(db=self.db[name]) as txn:
            cur = txn.cursor()
            if not cur.set_range(after):
                return out, None
            for k, v in cur:
                if k == after:
                    continue
                read += 1
                if keep is None or keep(v):
                    out.append((bytes(k), self._decode(name, txn, bytes(k), v)))
                if read >= limit:
                    return out, bytes(k)
        return out, None

    def _decode(self, name: str, txn: lmdb.Transaction, k: bytes, v: bytes) -> Any:
        if name == "spill":
            entry, _ = rows.decode(k.partition(b"\0")[2], v)
            return rows.as_dict(entry, "")
        if name in ("index", "plan"):
            legacy = rows.legacy_dict(v)
            if legacy is not None:
                return legacy
            entry, number = rows.decode(k, v)
            key = "" if number == rows.NO_OBJECT else self._object_key(txn, number)
            row = rows.as_dict(entry, key)
            if name == "index":
                row["retain_until"], row["lock_mode"] = self._lock_of(txn, key)
            return row
        return json.loads(v)

    def _object_key(self, txn: lmdb.Transaction, number: int) -> str:
        key = self._keys.get(number)
        if key is None:
            raw = txn.get(OBJECT_NUMBER.pack(number), db=self.db["objkeys"])
            key = bytes(raw).decode() if raw is not None else ""
            if len(self._keys) >= DECODE_CACHE:
                self._keys.clear()
            self._keys[number] = key
        return key

    def _lock_of(self, txn: lmdb.Transaction, key: str) -> tuple[str, str]:
        """(retain-until date, mode) of an object's lock, or ("", "")."""
        lock = self._locks.get(key)
        if lock is None:
            raw = txn.get(key.encode(), db=self.db["objects"])
            r = (json.loads(bytes(raw)).get("retention") if raw is not None else None) or {}
            lock = r.get("retain_until", ""), r.get("mode", "") if r.get("retain_until") else ""
            if len(self._locks) >= DECODE_CACHE:
                self._locks.clear()
            self._locks[key] = lock
        return lock

    def path_for_sop(self, sop_uid: str) -> bytes | None:
        """The newest file with this SOP UID: the SOP log's rows not merged yet (after a
        killed run, or during one: a scan) come before the table's."""
        uid = rows.packed_uid(sop_uid)[:500]
        with self.env.begin() as txn:
            logged = soplog.in_log(txn, self.db.get("soplog"), uid, newest_only=True)
            return logged[0] if logged else self._sop_row(txn, uid, sop_uid)

    def _sop_row(self, txn: lmdb.Transaction, uid: bytes, sop_uid: str) -> bytes | None:
        """The SOP table's path for a UID (packed; rows of old states: the UID's text)."""
        raw = txn.get(uid, db=self.db["sop"]) or txn.get(sop_uid.encode(), db=self.db["sop"])
        return None if raw is None else bytes(raw)

    def paths_for_sop(self, sop_uid: str) -> list[bytes]:
        """Every migrated file with this SOPInstanceUID and bytes of its own: the newest
        first, then back along the `conflicts` chain (each names the file it displaced).
        Rows still in the SOP log count as their merge will: each displaces the one before
        it (the table's row first), as soplog.conflict_row judges."""
        uid = rows.packed_uid(sop_uid)[:500]
        found: list[bytes] = []
        digests: set[str] = set()
        with self.env.begin() as txn:
            index, conflicts = self.db["index"], self.db["conflicts"]
            chain = soplog.in_log(txn, self.db.get("soplog"), uid)[::-1]  # oldest first
            table = self._sop_row(txn, uid, sop_uid)
            if table is not None:
                chain.insert(0, table)
            merged: dict[bytes, bytes] = {}  # the rows the merge will write

            def known(k: bytes) -> Any:
                return merged.get(k) or txn.get(k, db=conflicts)
            for older, newer in itertools.pairwise(chain):
                row = soplog.conflict_row(lambda k: txn.get(k, db=index), known, newer, older)
                if row is not None:
                    merged[row[0]] = row[1]
            for path in soplog.displaced_chain(known, chain[-1]) if chain else ():
                raw = txn.get(path_key(path), db=index)
                if raw is not None:
                    row = self._decode("index", txn, path_key(path), raw)
                    if row["sop_uid"] == sop_uid and row["blake3"] not in digests:
                        digests.add(row["blake3"])  # the same bytes twice: one file to name
                        found.append(path)
        return found

    def index_row(self, path: bytes) -> dict[str, Any] | None:
        with self.env.begin(db=self.db["index"]) as txn:
            raw = txn.get(path_key(path))
            return None if raw is None else self._decode("index", txn, path_key(path), raw)


__all__ = ["DECODE_CACHE", "OBJECT_NUMBER", "ReadBack", "migrated_in"]
