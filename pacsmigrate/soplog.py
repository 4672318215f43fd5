"""The SOP table (packed SOPInstanceUID -> path), written through an append-only log.

Keyed by UID, the table has no locality when UIDs are random (2.25.<uuid>, as many systems
make them): a row put at commit dirties a 4 KiB page of its own, and a commit's cost a
file doubled at 1M files and tripled at 5M (RESULTS 2026-12-07 12:45 and 16:00). So a
commit whose rows are spread (`clustered`) appends them to `soplog`, keyed by a sequence
number (appends fill pages in order), as do the commits after it, and the rows reach the
table later, in UID order (rows that share pages, as UIDs numbered in order do, still go
straight into the table: there the log would only add the merge):
- the end-of-run compaction writes the table afresh, merged with the log sorted in runs of
  RUN_ROWS rows (an external sort: memory stays bounded at any size; `rewrite_tables`);
- otherwise (a small run, no room to compact, before `index merge` or a repair)
  `merge_sop_log` puts the log's oldest rows sorted by UID in batches, each batch and the
  deletion of its log rows in one transaction: a kill keeps one or the other.
Either way the rows are applied in the order they were committed: the newest path of a
UID is the table's, and a path that displaces another whose bytes differ is recorded in
`conflicts` (the bytes judged by the two files' index rows at the merge). Readers
(`in_log`) look at the log first, newest row first, while it holds rows: after a
killed run, or during one.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import json
import marshal
import operator
import shutil
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lmdb

from . import faults, rows
from .lmdbfile import COPY_BATCH, rows_within
from .paths import from_fields, path_fields
from .tables import path_key

_SEQ = struct.Struct(">Q")
_LEN = struct.Struct(">H")
_UID = operator.itemgetter(0)
RUN_ROWS = 250_000  # rows sorted in memory at once (~50 MB of Python tuples)
MERGE_PAGES = 4096  # pages one direct merge transaction may dirty (as a commit: 16 MiB)
MERGE_ROWS = 100_000  # rows a direct merge transaction takes at most
CHUNK_ROWS = 8192  # rows of the table read at once while the compaction merges
JUDGED = 64  # SOP rows a commit needs before clustered() judges them
SPILL = "checkpoint.soprun"  # the compaction's sorted runs, in the state directory

Row = tuple[bytes, bytes]  # (packed UID, path)
Conflict = Callable[[bytes, bytes], None]  # (path, the path it displaces)


def encode(uid: bytes, path: bytes) -> bytes:
    return _LEN.pack(len(uid)) + uid + path


def decode(raw: bytes | memoryview) -> Row:
    raw = bytes(raw)
    n = _LEN.unpack_from(raw)[0]
    return raw[2:2 + n], raw[2 + n:]


def append(txn: lmdb.Transaction, log: Any, pairs: list[Row]) -> None:
    """Append (uid, path) rows to the log, after its last."""
    cur = txn.cursor(db=log)
    first = _SEQ.unpack(cur.key())[0] + 1 if cur.last() else 0
    cur.putmulti([(_SEQ.pack(first + i), encode(uid, path))
                  for i, (uid, path) in enumerate(pairs)], append=True)


def in_log(txn: lmdb.Transaction, log: Any, uid: bytes, *, newest_only: bool = False
           ) -> list[bytes]:
    """The paths the log's rows for `uid` name, newest first (a scan of the log)."""
    found: list[bytes] = []
    cur = None if log is None else txn.cursor(db=log)
    if cur is None or not cur.last():
        return found
    for _, raw in cur.iterprev():
        got, path = decode(raw)
        if got == uid:
            found.append(path)
            if newest_only:
                break
    return found


def log_rows(txn: lmdb.Transaction, log: Any) -> int:
    return 0 if log is None else int(txn.stat(log)["entries"])


def conflict_row(index_get: Callable[[bytes], Any], conflicts_get: Callable[[bytes], Any],
                 path: bytes, other: bytes) -> tuple[bytes, bytes] | None:
    """The `conflicts` row for a file at `path` whose SOP UID the file at `other` had:
    None when both are the same file or the other is no longer indexed. When both hold the
    same bytes (the same content twice is not a conflict), the other's own conflict passes
    on: it names a file of other bytes that `path` now stands in front of (an edited
    instance sent twice would otherwise hide the original it replaced)."""
    if other == path:
        return None
    theirs = index_get(path_key(other))
    if theirs is None:
        return None
    names = path_fields(other)
    if rows.legacy_dict(theirs) is None:
        mine = index_get(path_key(path))
        if mine is None:
            return None
        if rows.legacy_dict(mine) is None and (
                rows.decode(path_key(other), theirs)[0].blake3
                == rows.decode(path_key(path), mine)[0].blake3):
            carried = conflicts_get(path_key(other))
            if carried is None:
                return None
            names = json.loads(bytes(carried))["other"]
            if names == path_fields(path):
                return None
    return path_key(path), json.dumps({**path_fields(path), "other": names}).encode()


def displaced_chain(conflicts_get: Callable[[bytes], Any], path: bytes) -> Iterator[bytes]:
    """`path`, then each file the one before it displaced (its `conflicts` row's `other`),
    until a file with no row or one already named (a chain that comes back on itself)."""
    seen: set[bytes] = set()
    while path not in seen:
        seen.add(path)
        yield path
        raw = conflicts_get(path_key(path))
        if raw is None:
            return
        other = json.loads(bytes(raw))["other"]
        path = from_fields(other["source_path"], other["source_path_b64"])


def clustered(uids: list[bytes]) -> bool:
    """Whether a commit's SOP UIDs, sorted, mostly differ from a neighbour only in their
    last bytes (a series' instances numbered in order: many rows a page of the table), or
    are spread over it (random UIDs, or a study or two a commit: a page a row). Fewer
    than JUDGED rows count as clustered: cheap either way."""
    if len(uids) < JUDGED:
        return True
    s = sorted(uids)
    near = sum(1 for a, b in itertools.pairwise(s) if a[:(n := min(len(a), len(b)) - 2)] == b[:n])
    return 2 * near >= len(s)


def put_rows(txn: lmdb.Transaction, sop: Any, index: Any, conflicts: Any,
             pairs: list[Row]) -> None:
    """Put rows into the table in their order, recording each UID another path had."""
    cur = txn.cursor(db=sop)
    _, added = cur.putmulti(pairs, overwrite=False)
    if added == len(pairs):
        return
    for uid, path in pairs:  # rare: find those that were there, row by row
        other = cur.get(uid)
        if other is not None and bytes(other) != path:
            found = conflict_row(lambda k: txn.get(k, db=index),
                                 lambda k: txn.get(k, db=conflicts), path, bytes(other))
            if found is not None:
                txn.put(*found, db=conflicts)
            txn.put(uid, path, db=sop)


def _oldest(txn: lmdb.Transaction, log: Any, limit: int) -> list[tuple[bytes, Row]]:
    cur = txn.cursor(db=log)
    if not cur.first():
        return []
    return [(bytes(k), decode(v)) for k, v in itertools.islice(cur.iternext(), limit)]


class SopTable:
    """The SOP table and its log; mixed into Checkpoint (whose `_write` and `db` it uses)."""

    db: dict[str, Any]
    env: lmdb.Environment
    state_dir: Path
    _write: Callable[[Callable[[lmdb.Transaction], Any]], None]
    _copy_table: Callable[[str, Any], None]
    _disk_full: Callable[[], bool]
    REWRITTEN: Sequence[str] = ("sop", "soplog")  # compact() leaves these to rewrite_tables

    def put_sops(self, txn: lmdb.Transaction, pairs: list[Row]) -> None:
        """A commit's SOP rows: into the table when they are clustered (few pages), else
        appended to the log, and to the log as long as it holds rows (its rows are older:
        a row put into the table beside them would be overtaken at the merge)."""
        if not pairs:
            return
        if log_rows(txn, self.db["soplog"]):
            append(txn, self.db["soplog"], pairs)
            return
        ordered = sorted(pairs, key=_UID)  # once: clustered() sorts sorted UIDs in one pass
        if clustered([uid for uid, _ in ordered]):
            put_rows(txn, self.db["sop"], self.db["index"], self.db["conflicts"], ordered)
        else:
            append(txn, self.db["soplog"], pairs)

    def sop_log_rows(self) -> int:
        with self.env.begin() as txn:
            return log_rows(txn, self.db["soplog"])

    def merge_sop_log(self) -> int:
        """Put the log's rows into the table (oldest first, sorted by UID a batch at a time,
        each batch deleted from the log in its transaction); returns how many."""
        merged = 0
        while True:
            taken = 0

            def write(txn: lmdb.Transaction) -> None:
                nonlocal taken
                limit = rows_within(MERGE_PAGES, [txn.stat(self.db["sop"])["leaf_pages"]])
                batch = _oldest(txn, self.db["soplog"], min(limit or MERGE_ROWS, MERGE_ROWS))
                taken = len(batch)
                # sorted by UID for the table's pages; stable: a UID's rows stay in order
                put_rows(txn, self.db["sop"], self.db["index"], self.db["conflicts"],
                         sorted((r for _, r in batch), key=_UID))
                cur = txn.cursor(db=self.db["soplog"])
                for k, _ in batch:
                    cur.set_key(k)
                    cur.delete()
            self._write(write)
            faults.point("mid-sop-merge")
            merged += taken
            if not taken:
                return merged

    def rewrite_tables(self, out: lmdb.Environment) -> None:
        """compact(): the table into `out` merged with the log in key order (the log stays
        behind), and the conflicts the merge finds into `out`'s `conflicts`."""
        with self.env.begin() as src:
            logged = log_rows(src, self.db["soplog"])
        out.open_db(b"soplog")
        if not logged:
            self._copy_table("sop", out)
            return
        target, conflicts = out.open_db(b"sop"), out.open_db(b"conflicts")
        spill = self.state_dir / SPILL
        shutil.rmtree(spill, ignore_errors=True)
        found: list[tuple[bytes, bytes]] = []

        def write(batch: list[Row]) -> None:
            with out.begin(write=True) as txn:
                txn.cursor(db=target).putmulti(batch, append=True)
                for k, v in found:
                    txn.put(k, v, db=conflicts)
            found.clear()
            faults.point("mid-compact")
        try:
            with self.env.begin() as src:
                index = self.db["index"]

                # this piece's conflicts so far (a UID's rows are all in one piece), then
                # those of the state: what a displaced copy's conflict is, for conflict_row
                recent: dict[bytes, bytes] = {}

                def known(k: bytes) -> Any:
                    return recent.get(k) or src.get(k, db=self.db["conflicts"])

                def conflict(path: bytes, other: bytes) -> None:
                    row = conflict_row(lambda k: src.get(k, db=index), known, path, other)
                    if row is not None:
                        found.append(row)
                        recent[row[0]] = row[1]
                sources = sorted_runs(src, self.db["soplog"], spill)
                cur = src.cursor(db=self.db["sop"])
                if cur.first():  # the table's rows come first
                    sources.insert(0, _chunks(cur.iternext(), CHUNK_ROWS))
                pending: list[Row] = []
                for piece in merged_pieces(sources):
                    recent.clear()
                    pending += newest_each(piece, conflict)
                    whole = len(pending) - len(pending) % COPY_BATCH
                    for i in range(0, whole, COPY_BATCH):
                        write(pending[i:i + COPY_BATCH])
                    pending = pending[whole:]
                write(pending)
        except (lmdb.Error, OSError) as exc:
            if self._disk_full():  # asked before the spill goes: removing it frees room
                raise OSError(errno.ENOSPC, "no room for the SOP log's merge") from exc
            raise
        finally:
            shutil.rmtree(spill, ignore_errors=True)

    def rewrite_room(self) -> int:
        """The spilled runs: about the log's pages."""
        with self.env.begin() as txn:
            st = txn.stat(self.db["soplog"])
        return int(st["psize"] * (st["leaf_pages"] + st["branch_pages"] + st["overflow_pages"]))


def newest_each(piece: list[Row], conflict: Conflict) -> list[Row]:
    """One row a UID, its last; each path that displaces another reported to conflict()."""
    if len(set(map(_UID, piece))) == len(piece):
        return piece  # the common case: no UID twice
    out: list[Row] = []
    for got, p in piece:
        if out and out[-1][0] == got:
            if p != out[-1][1]:
                conflict(p, out[-1][1])
            out[-1] = (got, p)
        else:
            out.append((got, p))
    return out


def merged_pieces(sources: list[Iterator[list[Row]]]) -> Iterator[list[Row]]:
    """The rows of sources (each: chunks of rows sorted by UID) in UID order, stable (a UID's
    rows in the order of the sources), as pieces: every buffered row below a bound that no
    unread row goes under, merged by list.sort (timsort merges sorted runs in C; a row at a
    time through heapq cost a good share of the merge). Every row of a UID is in one piece."""
    bufs = [_Buf(first, 0, it) for it in sources if (first := next(it, None))]
    while bufs:
        bound = None  # the least last UID of the buffers with more to come
        for b in bufs:
            # rows left all of one UID: take the next chunk too (its rows may share it)
            while b.source is not None and b.rows[b.pos][0] == b.rows[-1][0]:
                more = next(b.source, None)
                if more is None:
                    b.source = None
                else:
                    b.rows, b.pos = b.rows[b.pos:] + more, 0
            if b.source is not None and (bound is None or b.rows[-1][0] < bound):
                bound = b.rows[-1][0]
        piece: list[Row] = []
        for b in bufs:
            end = len(b.rows) if bound is None else bisect.bisect_left(b.rows, bound, b.pos,
                                                                        key=_UID)
            piece += b.rows[b.pos:end]
            b.pos = end
            if b.pos == len(b.rows):
                more = next(b.source, None) if b.source is not None else None
                b.rows, b.pos = more or [], 0
        bufs = [b for b in bufs if b.rows]
        if len(sources) > 1:
            piece.sort(key=_UID)
        yield piece


@dataclass(slots=True)
class _Buf:
    rows: list[Row]  # a chunk (or more) of a source
    pos: int  # the first row not taken
    source: Iterator[list[Row]] | None  # None once it has no more chunks


def _chunks(rows_: Iterator[Row], n: int) -> Iterator[list[Row]]:
    return iter(lambda: list(itertools.islice(rows_, n)), [])


def sorted_runs(txn: lmdb.Transaction, log: Any, spill: Path) -> list[Iterator[list[Row]]]:
    """The log in runs sorted by UID (stable: a UID's rows in log order), in log order, each
    as chunks of rows: one run in memory when it fits RUN_ROWS, else files under `spill`
    (marshal'ed chunks, read back a chunk a run at a time: RUN_ROWS rows over all runs)."""
    cur = txn.cursor(db=log)
    total = log_rows(txn, log)
    chunk = max(256, min(8192, RUN_ROWS // max(1, -(-total // RUN_ROWS))))
    # (bytes: the transaction is not a buffers=True one)
    values = cast(Iterator[bytes], cur.iternext(keys=False) if cur.first() else iter(()))
    runs: list[Iterator[list[Row]]] = []
    while True:
        # decode() inline: a function call a row is a good share of the merge's cost
        run: list[Row] = [(v[2:2 + (n := v[0] << 8 | v[1])], v[2 + n:])
                          for v in itertools.islice(values, RUN_ROWS)]
        if not run:
            return runs
        run.sort(key=_UID)
        if not runs and len(run) < RUN_ROWS:
            return [iter([run])]
        spill.mkdir(exist_ok=True)
        name = spill / f"run-{len(runs)}"
        with open(name, "wb") as f:
            for i in range(0, len(run), chunk):
                body = marshal.dumps(run[i:i + chunk])
                f.write(_SEQ.pack(len(body)) + body)
        runs.append(_read_run(name))


def _read_run(name: Path) -> Iterator[list[Row]]:
    # Opened for each chunk: 400 runs at 100M rows must not hold 400 files open. (marshal
    # .loads of a chunk's bytes: marshal.load on a file reads object by object.)
    offset = 0
    while True:
        with open(name, "rb") as f:
            f.seek(offset)
            head = f.read(_SEQ.size)
            if not head:
                return
            body = f.read(_SEQ.unpack(head)[0])
        offset += len(head) + len(body)
        yield marshal.loads(body)
