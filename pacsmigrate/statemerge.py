"""`index merge`: the states of several slices (`--shard K/N`) of one migration, as one.

The merged state is a state like any other: verify, get, locate, restore and the exports
read it. Rows are copied as they are, only their object numbers moved past those already
merged, so the index holds exactly the rows the slices committed. Tables are copied in
short transactions: memory stays flat whatever the states' size.

A path found in two states (two runs over overlapping sources) keeps the newer version,
as `index rebuild` does; an object both states hold (the same files packed alike) is one
object. A SOPInstanceUID found at two paths with other bytes is listed in `conflicts`, as
in a single run. The CLI merges into a new directory beside the target and renames it into
place at the end, so an interrupted merge leaves no state that looks whole.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import lmdb

from . import rows, soplog
from .errors import StateError
from .records import now_iso
from .slicing import as_doc, recorded_slice
from .tables import CONTENT_KEYS, path_key, renumbered_content

BATCH = 4096
_ID_BYTES = 4  # objkeys: number (4 bytes big endian) -> object key
# Meta copied from the first state; the rest (config, counters) is merged.
_SAME_META = (b"key_secret", b"format", b"ca_bundle", b"tiers")


@dataclass
class Merged:
    """What one merge did."""

    states: int = 0
    objects: int = 0
    rows: int = 0
    superseded: int = 0  # rows replaced by a newer version of the same file
    problems: int = 0
    conflicts: int = 0
    pending: int = 0  # files the slices still have to migrate (spilled, not stored)
    sources: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    cuts: set[str] = field(default_factory=set)  # how the slices were cut (slicing.py)


def _log_batches(env: lmdb.Environment, db: Any) -> Iterator[list[tuple[bytes, bytes]]]:
    """A state's SOP log rows not merged yet, as (uid, path), oldest first."""
    for chunk in raw_batches(env, db):
        yield [soplog.decode(v) for _, v in chunk]


def raw_batches(env: lmdb.Environment, db: Any, *, batch: int = BATCH
                ) -> Iterator[list[tuple[bytes, bytes]]]:
    """A table's raw rows in key order, a short read transaction per batch (none for a
    table the state does not have: opened read-only, an older state may lack one)."""
    if db is None:
        return
    after: bytes | None = None
    while True:
        with env.begin(db=db) as txn:
            cur = txn.cursor()
            if after is None:
                more = cur.first()
            else:
                more = cur.set_range(after) and (bytes(cur.key()) != after or cur.next())
            if not more:
                return
            chunk = [(bytes(k), bytes(v)) for k, v in itertools.islice(cur, batch)]
        if not chunk:
            return
        yield chunk
        after = chunk[-1][0]


class MergeTables:
    """`merge_state`, mixed into Checkpoint (which opens the tables and owns the format)."""

    env: lmdb.Environment
    db: dict[str, Any]
    state_dir: Any
    _write: Callable[[Callable[[lmdb.Transaction], Any]], None]  # LmdbFile's
    merge_sop_log: Callable[[], int]  # SopTable's
    counts: Callable[[], dict[str, int]]
    get_meta: Callable[[str], Any]
    put_meta: Callable[[str, Any], None]
    bare_content: bool

    def merge_state(self, other: Any, result: Merged) -> None:
        """Copy another state's committed migration into this one (see the module)."""
        if other.counts()["intents"]:
            raise StateError(f"{other.state_dir} has uploads in doubt (an interrupted run): "
                             "run its `migrate` again to settle them, then merge")
        # This state's SOP log first: its rows are older, and conflicts are judged by index
        # rows, which the other's are about to replace.
        self.merge_sop_log()
        config = self._merge_config(other, result)
        offset = self._next_object() - 1
        # Objects this state holds too (two runs packed the same files alike: same key)
        # keep the number they have here; the others move past the numbers taken.
        shared = self._shared_objects(other)

        def number(n: int) -> int:
            return shared.get(n, n + offset)

        copy = self._copy
        copy(other, "objkeys", lambda k, v: None if _id(k) in shared else (
            _id_key(number(_id(k))), v))
        copy(other, "objects", lambda k, v: None if _record_id(v) in shared else (
            k, _object(v, number)))
        skipped: set[bytes] = set()
        for chunk in raw_batches(other.env, other.db["index"]):
            self._write(functools.partial(self._index, chunk=chunk, number=number,
                                          result=result, skipped=skipped))
        # The other's conflicts first: a path of its table that displaces one of ours may
        # have displaced others there, and ours joins the end of that chain (below).
        copy(other, "conflicts", lambda k, v: (k, v))
        for chunk in raw_batches(other.env, other.db["sop"]):
            self._write(functools.partial(self._sop, chunk=chunk, skipped=skipped,
                                          table=True))
        for chunk in _log_batches(other.env, other.db.get("soplog")):
            self._write(functools.partial(self._sop, chunk=chunk, skipped=skipped,
                                          table=False))
        copy(other, "content", lambda k, v: (k, renumbered_content(k, v, number)), keep=True)
        if other.bare_content and other.counts()["content"]:  # rows keyed by digest alone
            self.put_meta(CONTENT_KEYS, None)
            self.bare_content = True
        copy(other, "groups", lambda k, v: (k, v))
        copy(other, "spill", lambda k, v: (k, v))  # files the slice has still to store
        for chunk in raw_batches(other.env, other.db["problems"]):
            self._write(functools.partial(self._problems, chunk=chunk, result=result))
        result.pending += other.counts()["spill"]

        with other.env.begin(db=other.db["meta"]) as txn:
            top = int(bytes(txn.get(b"next_object") or b"1"))
            cur = txn.cursor()
            early = [(bytes(k), int(bytes(v))) for k, v in cur.iternext()
                     if bytes(k).startswith(b"id:")] if cur.set_range(b"id:") else []

        def meta(txn: lmdb.Transaction) -> None:
            m = self.db["meta"]
            txn.put(b"next_object", str(offset + top).encode(), db=m)
            for k, n in early:  # numbers a duplicate gave an object not committed
                txn.put(k, str(number(n)).encode(), db=m)
            mine = json.loads(bytes(txn.get(b"dedup", b"[0, 0]", db=m)))
            theirs = other.deduplicated()
            txn.put(b"dedup", json.dumps([mine[0] + theirs[0], mine[1] + theirs[1]]).encode(),
                    db=m)
            txn.put(b"config", json.dumps(config).encode(), db=m)
        self._write(meta)
        result.states += 1
        counts = self.counts()
        result.objects, result.conflicts = counts["objects"], counts["conflicts"]

    # -- pieces ---------------------------------------------------------------------------
    def _merge_config(self, other: Any, result: Merged) -> dict[str, Any]:
        theirs = other.get_meta("config")
        if not theirs:
            raise StateError(f"{other.state_dir} holds no migration")
        mine = self.get_meta("config")
        with other.env.begin(db=other.db["meta"]) as txn:
            their_meta = {k: txn.get(k) for k in _SAME_META}
        if mine is None:
            mine = {k: v for k, v in theirs.items()
                    if k not in ("shard", "shard_cut", "shard_plan", "created")}
            mine.update({"sources": [], "merged_from": [], "created": now_iso()})

            def first(txn: lmdb.Transaction) -> None:
                for k, v in their_meta.items():
                    if v is not None:
                        txn.put(k, bytes(v), db=self.db["meta"])
            self._write(first)
        else:
            if mine["dest"] != theirs["dest"]:
                raise StateError(f"{other.state_dir} is a migration to {theirs['dest']}, not "
                                 f"{mine['dest']}: merge only the slices of one migration")
            if (mine.get("sse_c_md5") or None) != (theirs.get("sse_c_md5") or None):
                raise StateError(f"{other.state_dir} stores its objects under another SSE-C "
                                 "key (or none): one index must be read with one key")
            secret = self.get_meta("key_secret")
            their_secret = their_meta[b"key_secret"]
            if their_secret is not None and json.loads(bytes(their_secret)) != secret:
                raise StateError(f"{other.state_dir} was keyed with another store's secret: "
                                 "merge only the slices of one migration")
        if theirs.get("shard"):
            result.shards.append(theirs["shard"])
            cut = recorded_slice(theirs)
            assert cut is not None  # a state with a shard records its slice
            result.cuts.add(json.dumps(as_doc(cut)))
            if len(result.cuts) > 1:
                raise StateError(f"{other.state_dir} is a slice cut another way than the "
                                 "states before it (made before slices were cut at 3 "
                                 "folders, or with another slicing plan): together they may "
                                 "miss files; migrate the tree again with one kind of slices")
        for s in theirs.get("sources", []):
            if s not in mine["sources"]:
                mine["sources"].append(s)
        mine["merged_from"].append({"state": str(other.state_dir),
                                    "shard": theirs.get("shard")})
        result.sources = list(mine["sources"])
        return dict(mine)

    def _next_object(self) -> int:
        with self.env.begin(db=self.db["meta"]) as txn:
            raw = txn.get(b"next_object")
        return int(bytes(raw)) if raw is not None else 1

    def _copy(self, other: Any, name: str,
              fn: Callable[[bytes, bytes], tuple[bytes, bytes] | None], *,
              keep: bool = False) -> None:
        """Copy a table, each row through fn; `keep`: rows this state has win."""
        for chunk in raw_batches(other.env, other.db[name]):
            def write(txn: lmdb.Transaction, chunk: list[tuple[bytes, bytes]] = chunk) -> None:
                db = self.db[name]
                for k, v in chunk:
                    got = fn(k, v)
                    if got is not None:
                        txn.put(got[0], got[1], db=db, overwrite=not keep)
            self._write(write)

    def _index(self, txn: lmdb.Transaction, chunk: list[tuple[bytes, bytes]],
               number: Callable[[int], int], result: Merged, skipped: set[bytes]) -> None:
        index, problems = self.db["index"], self.db["problems"]
        for k, v in chunk:
            old = txn.get(k, db=index)
            if old is not None:
                result.superseded += 1
                if rows.stat_of(old)[1] > rows.stat_of(v)[1]:
                    skipped.add(k)  # the version merged before is the newer one
                    continue
            else:
                result.rows += 1
            txn.put(k, rows.renumbered(v, number), db=index)
            txn.delete(k, db=problems)

    def _sop(self, txn: lmdb.Transaction, chunk: list[tuple[bytes, bytes]],
             skipped: set[bytes], *, table: bool) -> None:
        """SOPInstanceUID -> path; a UID at another path with other bytes is a conflict.
        `table`: rows of the other's table, whose paths head chains of conflicts copied from
        it: the path this state had is linked to the chain's last file, not to its head
        (whose link to the file it displaced there would be lost)."""
        sop, index, conflicts = self.db["sop"], self.db["index"], self.db["conflicts"]
        rest = []
        for uid, path in chunk:
            if path_key(path) in skipped:
                continue  # it keeps the other state's, newer, version
            ours = txn.get(uid, db=sop) if table else None
            if ours is None or bytes(ours) == path or txn.get(path_key(path),
                                                              db=conflicts) is None:
                rest.append((uid, path))
                continue
            *_, last = soplog.displaced_chain(lambda k: txn.get(k, db=conflicts), path)
            row = soplog.conflict_row(lambda k: txn.get(k, db=index),
                                      lambda k: txn.get(k, db=conflicts), last, bytes(ours))
            if row is not None and txn.get(row[0], db=conflicts) is None:
                txn.put(*row, db=conflicts)
            txn.put(uid, path, db=sop)
        soplog.put_rows(txn, sop, index, conflicts, rest)

    def _shared_objects(self, other: Any) -> dict[int, int]:
        """Numbers of the other state's objects that this one holds already -> ours."""
        shared: dict[int, int] = {}
        for chunk in raw_batches(other.env, other.db["objects"]):
            with self.env.begin(db=self.db["objects"]) as txn:
                for k, v in chunk:
                    mine = txn.get(k)
                    if mine is not None:
                        shared[_record_id(v)] = _record_id(bytes(mine))
        return shared

    def _problems(self, txn: lmdb.Transaction, chunk: list[tuple[bytes, bytes]],
                  result: Merged) -> None:
        for k, v in chunk:
            if txn.get(k, db=self.db["index"]) is None:  # migrated by another state
                txn.put(k, v, db=self.db["problems"])
                result.problems += 1


def merge_into(out: Any, states: list[Any]) -> Merged:
    """Merge the states at these paths into the open checkpoint `out`, each read-only under
    a shared lock (no run may change a state while it is copied; nothing is written to it)."""
    from .checkpoint import Checkpoint  # the checkpoint mixes this module in

    result = Merged()
    for path in states:
        src = Checkpoint(path, readonly=True, idle=True)  # no run may change it meanwhile
        try:
            out.merge_state(src, result)
        finally:
            src.close()
    return result


def _id(key: bytes) -> int:
    """An objkeys key: the object's number, 4 bytes big endian."""
    return int.from_bytes(key[:_ID_BYTES], "big")


def _id_key(number: int) -> bytes:
    return number.to_bytes(_ID_BYTES, "big")


def _record_id(raw: bytes) -> int:
    return int(json.loads(raw).get("id") or 0)


def _object(raw: bytes, number: Callable[[int], int]) -> bytes:
    record = json.loads(raw)
    if record.get("id"):
        record["id"] = number(int(record["id"]))
    return json.dumps(record).encode()


__all__ = ["MergeTables", "Merged", "merge_into", "raw_batches"]
