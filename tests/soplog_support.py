"""What the SOP log tests (test_soplog*.py) share: commits of random SOP UIDs, the
reference model of the rule (rows applied in commit order, the newest path of a UID wins, a
path displacing another with other bytes is a conflict), and the tables a state holds.
test_soplog.py's killed-merge child process imports `commits` from here."""

from __future__ import annotations

import random

from pacsmigrate import rows
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.paths import from_fields
from pacsmigrate.records import DICOM, Described, Entry, StoredObject

GROUP = "0" * 32


def entry(path: bytes, digest: int, sop: str) -> Entry:
    about = Described(GROUP, DICOM, "", "1.2.3", "1.2.3.4", sop, "CT", "20240101",
                      "1.2.840.10008.1.2.1")
    return Entry(path, 512, 10, f"{digest:064x}", 10, 1, about)


def commits(seed: int, objects: int, start: int = 0) -> list[StoredObject]:
    """Objects whose entries share SOP UIDs (random 2.25 ones, from a small pool) and
    paths: the same file again (its bytes may have changed), another file with the same
    bytes, others with other bytes."""
    fixed = random.Random(0)  # a file keeps its UID in every call
    pool = [f"2.25.{fixed.getrandbits(100)}" for _ in range(40)]
    sop = {b"/pacs/%03d" % i: fixed.choice(pool) for i in range(120)}
    rnd = random.Random(seed)
    out = []
    for n in range(start, start + objects):
        entries = {}
        for _ in range(rnd.randrange(1, 9)):
            path = b"/pacs/%03d" % rnd.randrange(120)
            entries[path] = entry(path, rnd.randrange(6), sop[path])
        out.append(StoredObject(f"k/{n}.tar", "tar", GROUP, f"b{n}", 4096, "e", "",
                                tuple(entries.values())))
    return out


def reference(*merged: list[StoredObject]
              ) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """(UID -> path, path -> the path it displaced): the rule, row by row in commit order,
    for commits merged in the groups given; whether two files hold other bytes is judged by
    their rows when their group is merged. A path displacing one of the same bytes takes
    that one's link (to a file of other bytes) as its own."""
    digest: dict[bytes, str] = {}
    table: dict[bytes, bytes] = {}
    conflicts: dict[bytes, bytes] = {}
    for objects in merged:
        digest.update({e.path: e.blake3 for o in objects for e in o.entries})
        for o in objects:
            for e in o.entries:
                uid = rows.packed_uid(e.about.sop_uid)
                other = table.get(uid)
                if other is not None and other != e.path:
                    if digest[other] != digest[e.path]:
                        conflicts[e.path] = other
                    elif conflicts.get(other, e.path) != e.path:  # a copy: its link passes on
                        conflicts[e.path] = conflicts[other]
                table[uid] = e.path
    return table, conflicts


def tables(cp: Checkpoint) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    with cp.env.begin() as txn:
        table = {bytes(k): bytes(v) for k, v in txn.cursor(db=cp.db["sop"])}
    conflicts = {k: from_fields(v["other"]["source_path"], v["other"]["source_path_b64"])
                 for k, v in cp.iter_db("conflicts")}
    return table, conflicts
