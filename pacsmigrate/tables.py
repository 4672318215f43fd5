"""Two tables of the checkpoint with their methods (checkpoint.py describes every table):
the spill (files of scattered studies, packed by study after the walk) and the retention
map; and the path keys all path tables use."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import blake3
import lmdb

from . import rows
from .records import Described, Entry, Member

# LMDB keys hold at most 511 bytes; paths may be 4096. Longer paths are keyed by a hash
# (the row then carries the path). Real paths start with "/", so "#" cannot collide.
_MAX_PATH_KEY = 400


def path_key(path: bytes) -> bytes:
    if len(path) <= _MAX_PATH_KEY:
        return path
    return b"#" + blake3.blake3(path).digest()


def spill_key(group: str, path: bytes) -> bytes:
    return group.encode() + b"\0" + path_key(path)


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

    def unspill(self, group: str, paths: list[bytes]) -> None:
        """Forget spilled files that were packed elsewhere or could not be read."""
        def write(txn: lmdb.Transaction) -> None:
            for p in paths:
                txn.delete(spill_key(group, p), db=self.db["spill"])
        self._write(write)

    def spilled_groups(self, groups: Iterable[str]) -> set[str]:
        """Which of these groups have spilled files."""
        found = set()
        with self.env.begin(db=self.db["spill"]) as txn:
            cur = txn.cursor()
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

