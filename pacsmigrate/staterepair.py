"""Repair: forget what `verify` found damaged in the store, so the next `migrate` stores
those files again (into new objects) and nothing else.

`verify` writes the files behind its findings to `STATE/repair.jsonl` (verify/repair.py):
every file of an object missing, of another size or checksum, or named by the index but
never committed, and every member read back altered or unreadable, each with the object
and offset its row pointed at. `forget` drops exactly the rows that still point there (so
applying a list twice, or after a repair, changes nothing), the content-table entries that
would deduplicate new copies into the damaged bytes, and the damaged objects' records (they
are no longer the home of any file; their bytes stay in the store until deleted). Later
bundles get keys of their own (a salt in `meta`), never a damaged object's key.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from . import rows
from .errors import StateError
from .paths import from_fields, path_fields
from .records import now_iso
from .tables import _WHERE, path_key

SALT = b"key_salt"


@dataclass(frozen=True)
class Damaged:
    """One file a verify found damaged: its path, the object its row pointed at and, for a
    member found altered inside an otherwise good object, the member's offset."""

    path: bytes
    key: str
    offset: int | None = None  # None: the whole object is lost


class RepairTables:
    """Mixed into Checkpoint, which opens the tables."""

    env: lmdb.Environment
    db: dict[str, Any]
    _write: Callable[[Callable[[lmdb.Transaction], Any]], None]
    _object_key: Callable[[lmdb.Transaction, int], str]  # Checkpoint's (cached objkeys)
    merge_sop_log: Callable[[], int]  # SopTable's

    def key_salt(self) -> str:
        """What later bundle ids are salted with ("" until a repair needed one)."""
        with self.env.begin(db=self.db["meta"]) as txn:
            raw = txn.get(SALT)
        return "" if raw is None else str(json.loads(bytes(raw)))

    def damaged_rows(self, keys: Iterable[str], members: Iterable[tuple[bytes, str]]
                     ) -> list[Damaged]:
        """The files behind verify's findings: every row of the objects `keys` (one walk of
        the index, decoding only the rows that match) and the rows of `members`."""
        lost = set(keys)
        out: list[Damaged] = []
        with self.env.begin() as txn:
            if lost:
                with txn.cursor(db=self.db["index"]) as cur:
                    for k, raw in cur:
                        where, _ = rows.place(raw)
                        key = where if isinstance(where, str) else self._object_key(txn, where)
                        if key in lost:
                            out.append(Damaged(_path_of(bytes(k), raw), str(key)))
            whole = {d.path for d in out}  # a member of a lost object: listed already
            for path, key in members:
                row = txn.get(path_key(path), db=self.db["index"])
                if row is not None and path not in whole:
                    whole.add(path)
                    out.append(Damaged(path, key, rows.place(row)[1]))
        return out

    def forget(self, damaged: Iterable[Damaged]) -> Forgotten:
        """Drop the rows still pointing at damaged bytes whose source file is still there
        (a file whose source is gone keeps its row: the damaged copy was the last one)."""
        items = list(damaged)
        out = Forgotten()
        self.merge_sop_log()  # the SOP rows below are looked up in the table alone

        def write(txn: lmdb.Transaction) -> None:
            nonlocal out
            out = Forgotten()  # the body runs again when the map grows
            index, content = self.db["index"], self.db["content"]
            lost: set[int] = set()  # numbers of objects lost whole
            bad: set[tuple[int, int]] = set()  # (number, offset) of altered members
            kept: set[str] = set()  # damaged objects some row still points at
            for d in items:
                k = path_key(d.path)
                raw = txn.get(k, db=index)
                if raw is None:
                    continue
                where, offset = rows.place(raw)
                key = where if isinstance(where, str) else self._object_key(txn, where)
                if key != d.key or (d.offset is not None and offset != d.offset):
                    continue  # stored again since, or another object's: not this finding
                if not os.path.lexists(d.path):
                    out.source_gone.append(d.path)
                    kept.add(d.key)
                    continue
                number = where if isinstance(where, int) else _number_of(txn, self.db, key)
                if number is not None and d.offset is None:
                    lost.add(number)
                elif number is not None:
                    bad.add((number, offset))
                if raw[:1] != b"{":
                    sop = rows.decode(k, raw)[0].about.sop_uid
                    uid = rows.packed_uid(sop)[:500] if sop else b""
                    if uid and txn.get(uid, db=self.db["sop"]) == d.path:
                        txn.delete(uid, db=self.db["sop"])
                txn.delete(k, db=index)
                out.dropped += 1
            if content is not None and (lost or bad):
                with txn.cursor(db=content) as cur:
                    stale = [bytes(k) for k, v in cur if len(v) == _WHERE.size and (
                        (n := _WHERE.unpack(v))[0] in lost or (n[0], n[1]) in bad)]
                for k in stale:
                    txn.delete(k, db=content)
            for key in sorted({d.key for d in items if d.offset is None} - kept):
                if txn.delete(key.encode(), db=self.db["objects"]):
                    out.objects.append(key)
            if out.dropped:  # a salt of its own: no new bundle can meet a damaged key
                txn.put(SALT, json.dumps(secrets.token_hex(8)).encode(), db=self.db["meta"])

        self._write(write)
        return out


@dataclass
class Forgotten:
    """What `forget` did: rows dropped (stored again by the run), the damaged objects no
    longer recorded, and damaged files whose source is gone (their rows kept)."""

    dropped: int = 0
    objects: list[str] = field(default_factory=list)
    source_gone: list[bytes] = field(default_factory=list)


def _number_of(txn: lmdb.Transaction, db: dict[str, Any], key: str | None) -> int | None:
    raw = txn.get(key.encode(), db=db["objects"]) if key else None
    return None if raw is None else int(json.loads(bytes(raw))["id"])


def _path_of(k: bytes, raw: bytes | memoryview) -> bytes:
    if bytes(raw[:1]) == b"{":
        d = json.loads(bytes(raw))
        return from_fields(d["source_path"], d.get("source_path_b64", ""))
    return rows.decode(k, raw)[0].path


REPAIR_FILE = "repair.jsonl"


APPLYING = "repair.applying"  # a list a migrate took: applied, or re-taken after a crash


def write_list(state_dir: Path, damaged: list[Damaged], *, name: str = REPAIR_FILE) -> Path:
    """The repair list verify leaves for the next migrate: added to one not applied yet
    (a later, shallower verify does not undo a deep one's findings); synced, then renamed
    into place."""
    target = state_dir / name
    tmp = target.with_name(name + ".tmp")
    listed = {(d.path, d.key, d.offset): d for d in (read_list(state_dir, name=name) or [])}
    listed.update({(d.path, d.key, d.offset): d for d in damaged})
    try:
        with open(tmp, "w", encoding="ascii") as out:
            out.writelines(json.dumps({**path_fields(d.path), "key": d.key,
                                      "offset": d.offset}, ensure_ascii=True) + "\n" for d in listed.values())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise StateError(f"cannot write the repair list {target}: {exc.strerror or exc} "
                         "(run verify as a user that may write the state directory)") from exc
    return target


def read_list(state_dir: Path, *, name: str = REPAIR_FILE) -> list[Damaged] | None:
    """The repair list, if a verify left one."""
    path = state_dir / name
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"cannot read the repair list {path}: {exc}") from exc
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            d = json.loads(line)
            out.append(Damaged(from_fields(d["source_path"], d["source_path_b64"]),
                               str(d["key"]), d["offset"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{path} line {n} is not a repair entry ({exc}): run verify "
                             "again to write it anew, or move the file away") from exc
    return out


def take_list(state_dir: Path) -> list[Damaged] | None:
    """The list to apply now: verify's, moved aside (a verify that ends while the run goes
    on starts a new one, applied by the next run), with one a stopped run was applying
    (applying a list twice changes nothing). None when there is none."""
    new = read_list(state_dir)
    if new is not None:
        write_list(state_dir, new, name=APPLYING)  # synced before the verify's goes
        (state_dir / REPAIR_FILE).unlink()
    return read_list(state_dir, name=APPLYING)


def done_with_list(state_dir: Path) -> None:
    """Keep the applied list beside the state (renamed), for the record."""
    stamp = now_iso().replace(":", "").replace("+0000", "Z")
    os.replace(state_dir / APPLYING, state_dir / f"repair-applied-{stamp}.jsonl")
