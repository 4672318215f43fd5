"""The resumable LMDB checkpoint: catalogue, intents, committed objects and the RIS index."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import blake3
import lmdb

from .errors import StateError, StateLockedError
from .paths import from_fields
from .records import BundlePlan, Catalogued, FileEntry, Problem

T = TypeVar("T")

# The map starts small and doubles whenever a write finds it full (100M files need ~100 GiB).
INITIAL_MAP_SIZE = 1 << 30
LOW_SPACE = 16 << 20  # below this, a failed write is reported as a full disk
FORMAT = 1

# Named databases. Keys are raw path bytes (see _pkey) unless said otherwise.
#   meta        name -> JSON               run configuration, key secret, format version
#   catalogue   group + 0 + path -> Catalogued   classified, not yet stored (sorted by group)
#   pending     path -> group               reverse map of the catalogue
#   intents     object key -> JSON plan     written before an upload starts
#   objects     object key -> JSON          acknowledged by the store
#   index       path -> JSON row            the RIS path -> object index
#   sop         SOPInstanceUID -> path
#   problems    path -> JSON Problem        not migrated (yet), with the reason
_DBS = ("meta", "catalogue", "pending", "intents", "objects", "index", "sop", "problems")


# LMDB keys hold at most 511 bytes; paths may be 4096. Longer paths are keyed by a hash
# (values always carry the full path). Real paths start with "/", so "#" cannot collide.
_MAX_PATH_KEY = 400


def _pkey(path: bytes) -> bytes:
    if len(path) <= _MAX_PATH_KEY:
        return path
    return b"#" + blake3.blake3(path).digest()


def _cat_key(group: str, path: bytes) -> bytes:
    return group.encode() + b"\0" + _pkey(path)


class Checkpoint:
    """Sole owner of the LMDB environment; every write goes through one thread.

    Async callers use `await cp.call(cp.method, ...)`; the single worker thread keeps
    LMDB's one-writer rule without locks of our own.
    """

    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        self.state_dir = state_dir
        self.readonly = readonly
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state directory {state_dir}: {exc}") from exc
        self._lock_fd: int | None = None
        if not readonly:
            self._take_lock()
        try:
            self.env = lmdb.open(str(state_dir / "checkpoint.lmdb"), map_size=INITIAL_MAP_SIZE,
                                 max_dbs=len(_DBS), readonly=readonly, subdir=True,
                                 readahead=False, lock=not readonly)
        except lmdb.Error as exc:
            self._release_lock()
            raise StateError(f"cannot open checkpoint in {state_dir}: {exc}") from exc
        self.db = {name: self.env.open_db(name.encode(), create=not readonly) for name in _DBS}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdb")

    def _take_lock(self) -> None:
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLockedError(
                f"another pacsmigrate run is using {self.state_dir}; wait for it to finish "
                "or give a different --state"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.env.close()
        self._release_lock()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def _write(self, body: Callable[[lmdb.Transaction], Any]) -> None:
        """One write transaction; the map grows when full; a full disk stops the run cleanly.

        On ENOSPC nothing of this transaction is kept (LMDB aborts it), so the run can be
        resumed once space is freed; an upload acknowledged but not yet committed is adopted
        from its intent then.
        """
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    body(txn)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                # Full filesystems surface as ENOSPC or, through the map, as EIO: ask the
                # filesystem rather than trust the error text.
                if shutil.disk_usage(self.state_dir).free < LOW_SPACE:
                    raise StateError(f"no space left for the checkpoint in {self.state_dir}: "
                                     "free some space, then re-run the same command to "
                                     "resume") from exc
                raise StateError(f"checkpoint write failed in {self.state_dir}: {exc}") from exc

    # -- meta -------------------------------------------------------------------------
    def get_meta(self, name: str) -> Any:
        with self.env.begin(db=self.db["meta"]) as txn:
            raw = txn.get(name.encode())
        return None if raw is None else json.loads(raw)

    def put_meta(self, name: str, value: Any) -> None:
        self._write(lambda txn: txn.put(name.encode(), json.dumps(value).encode(),
                                        db=self.db["meta"]))

    # -- catalogue --------------------------------------------------------------------
    def triage(self, entries: list[FileEntry]) -> tuple[list[FileEntry], int, int]:
        """Split a scan batch: (to classify, already migrated, already catalogued).

        A file counts as known only while its size and mtime are what we recorded.
        """
        todo: list[FileEntry] = []
        done = known = 0
        with self.env.begin() as txn:
            for e in entries:
                row = txn.get(_pkey(e.path), db=self.db["index"])
                if row is not None:
                    r = json.loads(row)
                    if r["size"] == e.size and r["mtime_ns"] == e.mtime_ns:
                        done += 1
                        continue
                group = txn.get(_pkey(e.path), db=self.db["pending"])
                if group is not None:
                    raw = txn.get(_cat_key(group.decode(), e.path), db=self.db["catalogue"])
                    if raw is not None:
                        rec = Catalogued.loads(raw)
                        if rec.size == e.size and rec.mtime_ns == e.mtime_ns:
                            known += 1
                            continue
                todo.append(e)
        return todo, done, known

    def catalogue(self, records: list[Catalogued], problems: list[Problem]) -> None:
        """Record classified files (replacing older records of the same path) and problems."""
        def write(txn: lmdb.Transaction) -> None:
            for rec in records:
                self._uncatalogue(txn, rec.path)
                txn.put(_cat_key(rec.group, rec.path), rec.dumps(), db=self.db["catalogue"])
                txn.put(_pkey(rec.path), rec.group.encode(), db=self.db["pending"])
                txn.delete(_pkey(rec.path), db=self.db["problems"])
            for p in problems:
                self._uncatalogue(txn, p.path)
                txn.put(_pkey(p.path), json.dumps(p.to_json()).encode(),
                        db=self.db["problems"])
        self._write(write)

    def _uncatalogue(self, txn: lmdb.Transaction, path: bytes) -> None:
        old = txn.get(_pkey(path), db=self.db["pending"])
        if old is not None:
            txn.delete(_cat_key(bytes(old).decode(), path), db=self.db["catalogue"])
            txn.delete(_pkey(path), db=self.db["pending"])

    def catalogue_after(self, after: bytes, limit: int) -> list[tuple[bytes, Catalogued]]:
        """The next `limit` catalogue records in (group, path) order after key `after`."""
        return self._range("catalogue", after, limit, Catalogued.loads)

    def _range(self, name: str, after: bytes, limit: int, decode: Callable[[bytes], T]
               ) -> list[tuple[bytes, T]]:
        """Up to `limit` records after key `after`, read in one short transaction."""
        out: list[tuple[bytes, T]] = []
        with self.env.begin(db=self.db[name]) as txn:
            cur = txn.cursor()
            if not cur.set_range(after):
                return out
            for k, v in cur:
                if k != after:
                    out.append((bytes(k), decode(v)))
                    if len(out) >= limit:
                        break
        return out

    def pending_totals(self) -> tuple[int, int]:
        files = size = 0
        with self.env.begin(db=self.db["catalogue"]) as txn:
            for _, v in txn.cursor():
                files += 1
                size += json.loads(v)["size"]
        return files, size

    # -- intents and commits ----------------------------------------------------------
    def put_intents(self, plans: list[BundlePlan]) -> None:
        """Write-ahead: the keys are recorded before any byte goes to the store."""
        def write(txn: lmdb.Transaction) -> None:
            for plan in plans:
                value = {"key": plan.key, "kind": plan.kind, "group": plan.group,
                         "bundle_id": plan.bundle_id,
                         "members": [m.dumps().decode() for m in plan.members]}
                txn.put(plan.key.encode(), json.dumps(value).encode(), db=self.db["intents"])
        self._write(write)

    def intents(self) -> list[BundlePlan]:
        plans = []
        with self.env.begin(db=self.db["intents"]) as txn:
            for _, v in txn.cursor():
                d = json.loads(v)
                plans.append(BundlePlan(d["group"], d["kind"],
                                        [Catalogued.loads(m.encode()) for m in d["members"]],
                                        d["key"], d["bundle_id"]))
        return plans

    def drop_intent(self, key: str) -> None:
        self._write(lambda txn: txn.delete(key.encode(), db=self.db["intents"]))

    def commit_objects(self, items: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
        """One transaction: acknowledged objects, their index rows, their intents gone.

        The members leave the catalogue: what was stored is what was read. A file changed
        after its read is caught by the next scan, whose size/mtime differ from the row.
        """
        def write(txn: lmdb.Transaction) -> None:
            for obj, rows in items:
                key = obj["key"].encode()
                txn.put(key, json.dumps(obj).encode(), db=self.db["objects"])
                for row in rows:
                    path = bytes.fromhex(row["path_hex"])
                    txn.put(_pkey(path), json.dumps(row).encode(), db=self.db["index"])
                    if row.get("sop_uid") and len(row["sop_uid"]) <= _MAX_PATH_KEY:
                        txn.put(row["sop_uid"].encode(), path, db=self.db["sop"])
                    self._uncatalogue(txn, path)
                    txn.delete(_pkey(path), db=self.db["problems"])
                txn.delete(key, db=self.db["intents"])
        self._write(write)

    def reset_catalogue(self) -> None:
        def write(txn: lmdb.Transaction) -> None:
            txn.drop(self.db["catalogue"], delete=False)
            txn.drop(self.db["pending"], delete=False)
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
            return {name: txn.stat(self.db[name])["entries"] for name in _DBS if name != "meta"}

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
            self.catalogue([], gone)
        return len(gone)

    def open_problems(self) -> int:
        """Files recorded as not migrated for a reason that is not a deliberate skip."""
        return sum(1 for _, v in self.iter_db("problems") if not v["final"])

    def iter_db(self, name: str, *, batch: int = 2000) -> Iterator[tuple[bytes, Any]]:
        """Stream a database in short read transactions (memory stays flat)."""
        after = b""
        while chunk := self._range(name, after, batch, json.loads):
            yield from chunk
            if len(chunk) < batch:
                return
            after = chunk[-1][0]

    def path_for_sop(self, sop_uid: str) -> bytes | None:
        with self.env.begin(db=self.db["sop"]) as txn:
            raw = txn.get(sop_uid.encode())
        return None if raw is None else bytes(raw)

    def index_row(self, path: bytes) -> dict[str, Any] | None:
        with self.env.begin(db=self.db["index"]) as txn:
            raw = txn.get(_pkey(path))
        return None if raw is None else json.loads(raw)
