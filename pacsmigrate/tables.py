"""Tables of the checkpoint with their methods (checkpoint.py describes every table): the
spill (files of scattered studies, packed by study after the walk), the retention map and
the content table (deduplication); and the path keys all path tables use."""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable
from typing import Any

import blake3
import lmdb

from . import rows
from .records import DICOM, Described, Entry, Member, Stored
from .retention import Lock, covers

# LMDB keys hold at most 511 bytes; paths may be 4096. Longer paths are keyed by a hash
# (the row then carries the path). Real paths start with "/", so "#" cannot collide.
_MAX_PATH_KEY = 400


def path_key(path: bytes) -> bytes:
    if len(path) <= _MAX_PATH_KEY:
        return path
    return b"#" + blake3.blake3(path).digest()


def spill_key(group: str, path: bytes) -> bytes:
    return group.encode() + b"\0" + path_key(path)


RUNNING = "running"  # a run's record from its start to its end (RunsTable.start_run)
KILLED = ("stopped without an end: killed, crashed or its machine went down (what it stored "
          "is counted by the runs after it)")


class RunsTable:
    """The history of runs, in `meta`; mixed into Checkpoint."""

    RUNS_KEPT = 10_000  # run records kept (nightly runs for decades)
    get_meta: Callable[[str], Any]
    put_meta: Callable[[str, Any], None]

    def start_run(self, run: dict[str, Any]) -> None:
        """The run's record as it starts (outcome RUNNING, no end), replaced by record_run
        when it ends: a run killed with SIGKILL, or a machine that went down, leaves it, and
        the next run (which holds the lock, so no other is alive) marks it KILLED."""
        runs = [{**r, "outcome": KILLED} if r.get("outcome") == RUNNING else r
                for r in self.get_meta("runs") or []]
        runs.append(run)
        self.put_meta("runs", runs[-self.RUNS_KEPT:])

    def record_run(self, run: dict[str, Any]) -> None:
        """Append one run's record (who, where, when, how it ended, its totals) to the
        state's history: every report carries the whole history, resumes included. It
        takes the place of the same run's start_run record."""
        runs = list(self.get_meta("runs") or [])
        if runs and runs[-1].get("outcome") == RUNNING and all(
                runs[-1].get(k) == run.get(k) for k in ("host", "pid", "started")):
            runs.pop()
        runs.append(run)
        self.put_meta("runs", runs[-self.RUNS_KEPT:])

    def runs(self) -> list[dict[str, Any]]:
        return list(self.get_meta("runs") or [])


# A dry run's plan row: (path key, encoded row, the study's group or b"" if not DICOM).
PlanRow = tuple[bytes, bytes, bytes]


def plan_row(e: Entry) -> PlanRow:
    k = path_key(e.path)
    return (k, rows.encode(e, rows.NO_OBJECT, long_path=k is not e.path),
            e.about.group.encode() if e.about.status == DICOM else b"")


class PlanTable:
    """Methods on the `plan` table (a dry run's); mixed into Checkpoint."""

    db: dict[str, Any]
    _write: Callable[[Callable[[lmdb.Transaction], Any]], None]  # LmdbFile's

    def record_plan(self, entries: list[Entry]) -> None:
        """A dry run's record of each file it read (replacing an older dry run's)."""
        self.record_plan_rows([plan_row(e) for e in entries])

    def record_plan_rows(self, planned: list[PlanRow], run: bytes = b"") -> int:
        """record_plan of rows made by plan_row (a dry run holds a batch of those: a
        few hundred bytes a file, where an Entry keeps its header's strings alive); each
        study's group is marked with `run` (a dry run's own bytes). Returns the studies not
        marked so before: summed over a dry run, the studies its plan holds (counted in
        the state, not in memory)."""
        new = 0

        def write(txn: lmdb.Transaction) -> None:
            nonlocal new
            new = 0
            plan, problems, groups = self.db["plan"], self.db["problems"], self.db["groups"]
            for k, row, group in planned:
                txn.put(k, row, db=plan)
                txn.delete(k, db=problems)
                if group and txn.get(group, db=groups) != run:
                    txn.put(group, run, db=groups)
                    new += 1
        self._write(write)
        return new


class SpillTable:
    """Methods on the `spill` table; mixed into Checkpoint, which opens the tables."""

    env: lmdb.Environment
    db: dict[str, Any]
    _write: Callable[[Callable[[lmdb.Transaction], Any]], None]  # LmdbFile's

    # -- the spill: scattered studies' files, packed by study after the walk ---------------
    def spill(self, members: list[Member]) -> None:
        def write(txn: lmdb.Transaction) -> None:
            for m in members:
                k = path_key(m.path)
                e = Entry(m.path, 0, m.size, m.blake3, m.size, m.mtime_ns, m.about)
                txn.put(spill_key(m.group, m.path),
                        rows.encode(e, rows.NO_OBJECT, long_path=k is not m.path,
                                    keep_accession=True),
                        db=self.db["spill"])
        self._write(write)

    def unspill(self, members: Iterable[Member]) -> None:
        """Forget spilled files (each under the group it was spilled with) that were packed
        elsewhere or could not be read."""
        def write(txn: lmdb.Transaction) -> None:
            for m in members:
                txn.delete(spill_key(m.group, m.path), db=self.db["spill"])
        self._write(write)

    def still_spilled(self, members: Iterable[Member]) -> list[Member]:
        """Those of `members` still in the spill (under their group)."""
        with self.env.begin(db=self.db["spill"]) as txn:
            return [m for m in members if txn.get(spill_key(m.group, m.path)) is not None]

    def spilled_groups(self, groups: Iterable[str]) -> set[str]:
        """Which of these groups have spilled files."""
        with self.env.begin(db=self.db["spill"]) as txn:
            return self.spilled_in(txn, groups)

    def spilled_in(self, txn: lmdb.Transaction, groups: Iterable[str]) -> set[str]:
        """spilled_groups within a transaction."""
        found = set()
        cur = txn.cursor(db=self.db["spill"])
        for g in groups:
            prefix = g.encode() + b"\0"
            if cur.set_range(prefix) and bytes(cur.key()).startswith(prefix):
                found.add(g)
        return found

    def spill_after(self, after: bytes, limit: int) -> list[tuple[bytes, Member]]:
        """The next `limit` spilled files in (group, path) order after key `after`."""
        out: list[tuple[bytes, Member]] = []
        with self.env.begin(db=self.db["spill"]) as txn:
            cur = txn.cursor()
            if not cur.set_range(after):
                return out
            for k, v in cur:
                k = bytes(k)
                if k == after:
                    continue
                group, _, pk = k.partition(b"\0")
                e, _ = rows.decode(pk, v)
                about = Described(group.decode(), *rows.about_fields(e.about))
                out.append((k, Member(e.path, e.size, e.mtime_ns, about, e.blake3)))
                if len(out) >= limit:
                    break
        return out



class RetentionTable:
    """The last run's --retention-map; mixed into Checkpoint, which opens the tables."""

    env: lmdb.Environment
    db: dict[str, Any]
    _write: Callable[[Callable[[lmdb.Transaction], Any]], None]  # LmdbFile's
    clear: Callable[..., None]  # Checkpoint's

    def load_retention(self, rows: Iterable[tuple[bytes, int, str]], *, batch: int = 100_000
                       ) -> int:
        """Replace the retention map with `rows` (streamed, in transactions of `batch`)."""
        self.clear("retention")
        n, chunk = 0, []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                n += self._put_retention(chunk)
                chunk = []
        return n + self._put_retention(chunk)

    def _put_retention(self, chunk: list[tuple[bytes, int, str]]) -> int:
        def write(txn: lmdb.Transaction) -> None:
            for key, years, label in chunk:
                txn.put(key, f"{years}\t{label}".encode(), db=self.db["retention"])
        self._write(write)
        return len(chunk)

    def retention_for(self, study_uid: str, accession: str) -> tuple[int, str] | None:
        """(years, label) the retention map gives a study, by UID, else accession number."""
        with self.env.begin(db=self.db["retention"]) as txn:
            raw = (study_uid and txn.get(b"u:" + study_uid.encode()[:500])) or (
                accession and txn.get(b"a:" + accession.encode()[:500]))
        if not raw:
            return None
        years, _, label = bytes(raw).decode().partition("\t")
        return int(years), label



_WHERE = struct.Struct("<IQQ?IB")  # object number, offset, length, zstd, lock (until, flags)
_SIZE_KEY = b"size:"  # content keys of this 13-byte form: sizes of large files stored
_SIZE = struct.Struct("<Q")
# Where a state says its DICOM content rows are keyed by study (content_key); a state
# without it may hold rows keyed by the digest alone, as every state before it did.
CONTENT_KEYS = "content_keys"
BY_STUDY = "study"


_PREFIX = 4  # bytes of a study in its DICOM content rows' keys


@functools.lru_cache(maxsize=4096)
def _study_prefix(group: str) -> bytes:
    return blake3.blake3(group.encode()).digest()[:_PREFIX]


def content_key(about: Described, digest: str) -> bytes:
    """A content row's key: a DICOM file's digest behind 4 bytes of its study (its group),
    so that the rows one commit adds sit on a page or two a study instead of a page each
    (a table keyed by digests alone dirties a page a row once it is large: RESULTS
    18:10); identical bytes have one header, so copies still meet. Other files (their
    group is their directory) by the digest alone, so copies in two folders meet."""
    return content_key_of(about, bytes.fromhex(digest))


def content_key_of(about: Described, digest: bytes) -> bytes:
    """content_key of a digest given as its 32 bytes."""
    return _study_prefix(about.group) + digest if about.status == DICOM else digest


def _size_key(size: int) -> bytes:
    return _SIZE_KEY + _SIZE.pack(size)


def _is_size_key(key: bytes) -> bool:
    return len(key) == len(_SIZE_KEY) + _SIZE.size and key.startswith(_SIZE_KEY)


class ContentTable:
    """Where committed content is (blake3 -> object, range, lock); mixed into Checkpoint."""

    env: lmdb.Environment
    db: dict[str, Any]
    _object_key: Callable[[lmdb.Transaction, int], str]  # Checkpoint's
    # Rows keyed by the digest alone may hold DICOM content too (a state made before
    # content_key): DICOM lookups that miss ask that key as well.
    bare_content = False

    def stored_content(self, about: Described, blake3_hex: str) -> Stored | None:
        """Where committed content with this blake3 is, and its object's lock (`about`:
        the header of a file with that content).

        Only committed objects are recorded: a duplicate never points at an object that a
        kill could still lose.
        """
        return self.stored_contents([(about, blake3_hex)]).get(blake3_hex)

    def stored_contents(self, asked: Iterable[tuple[Described, str]]) -> dict[str, Stored]:
        """stored_content for many (header, digest) in one read transaction (a plan's
        members: LMDB calls release the GIL, so one per member would queue the event loop
        for it); by digest."""
        out: dict[str, Stored] = {}
        if self.db["content"] is None:
            return out
        db, bare = self.db["content"], self.bare_content
        with self.env.begin() as txn:
            # Most files are new: a study with no row at all (one seek) needs no lookup a
            # file. A bare key that happens to share the 4 bytes only costs the lookups.
            cur = txn.cursor(db=db)
            holds: dict[bytes, bool] = {}  # study prefix -> some row has it
            for about, d in asked:  # (callers ask each digest once)
                if not d:
                    continue
                if about.status == DICOM and not bare:
                    prefix = _study_prefix(about.group)
                    if (there := holds.get(prefix)) is None:
                        there = holds[prefix] = (cur.set_range(prefix)
                                                 and cur.key()[:_PREFIX] == prefix)
                    if not there:
                        continue
                raw = txn.get(content_key(about, d), db=db)
                if raw is None and bare and about.status == DICOM:
                    raw = txn.get(bytes.fromhex(d), db=db)
                if raw is not None:
                    number, offset, length, zstd, until, flags = _WHERE.unpack(raw)
                    out[d] = Stored(self._object_key(txn, number), offset, length,
                                    "zstd" if zstd else "", (until, flags))
        return out

    def has_large_file(self, size: int) -> bool:
        """Whether a large file (stored alone) of this size is committed: only then is a
        new one of that size hashed before its upload, to find it is a copy."""
        if self.db["content"] is None:
            return False
        with self.env.begin(db=self.db["content"]) as txn:
            return txn.get(_size_key(size)) is not None

    def _note_contents(self, txn: lmdb.Transaction, entries: list[tuple[Entry, bytes]],
                       number: int, lock: Lock, *, alone: bool) -> None:
        """_note_content for an object's entries (each with its digest's bytes): new
        content, the usual case, in one call (putmulti); any digest that was there already
        goes through _note_content."""
        if not entries:
            return
        pack = _WHERE.pack
        where = [(content_key_of(e.about, digest),
                  pack(number, e.offset, e.length, bool(e.encoding), *lock))
                 for e, digest in entries]
        _, added = txn.cursor(db=self.db["content"]).putmulti(where, overwrite=False)
        if added == len(where) and not alone:
            return
        for e, _ in entries:  # rare: copies of stored content (or a large file alone)
            self._note_content(txn, e, number, lock, alone=alone)

    def _note_content(self, txn: lmdb.Transaction, e: Entry, number: int, lock: Lock, *,
                      alone: bool) -> None:
        """Record where content is stored: the first copy, or a later one locked longer
        (so copies in longer-kept studies can point at it); `alone`: a large file stored
        as its own object, whose size is noted too (see has_large_file)."""
        if alone:
            txn.put(_size_key(e.size), b"", db=self.db["content"])
        key = content_key(e.about, e.blake3)
        row = _WHERE.pack(number, e.offset, e.length, bool(e.encoding), *lock)
        # New content, the usual case: one call (each LMDB call hands the GIL around).
        if txn.put(key, row, db=self.db["content"], overwrite=False):
            return
        old = txn.get(key, db=self.db["content"])
        assert old is not None  # it was there a moment ago, in this transaction
        had = _WHERE.unpack(old)[4:]
        if covers(lock, had) and lock != had:
            txn.put(key, row, db=self.db["content"])


def renumbered_content(key: bytes, raw: bytes | memoryview, number: Callable[[int], int]
                       ) -> bytes:
    """A content row with its object number mapped (`index merge`)."""
    raw = bytes(raw)
    if _is_size_key(key):
        return raw
    old, *rest = _WHERE.unpack(raw)
    return _WHERE.pack(number(old), *rest)
