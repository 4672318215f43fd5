"""The LMDB checkpoint in a real state directory: lock, catalogue, intents, commits."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsmigrate import manifest
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.errors import StateError, StateLockedError
from pacsmigrate.paths import member_name
from pacsmigrate.records import DICOM, UNSORTED, BundlePlan, Catalogued, FileEntry, Problem

GROUPS = ["0" * 32, "7f" * 16, "ff" * 16]


def rec(path: bytes, group: str = GROUPS[0], size: int = 100, mtime_ns: int = 1000,
        sop: str = "") -> Catalogued:
    return Catalogued(path, size, mtime_ns, group, DICOM, "", "1.2.3", "1.2.3.4",
                      sop or "1.2.3.4." + path.hex(), "CT", "20240101", "1.2.840.10008.1.2.1")


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Checkpoint]:
    c = Checkpoint(tmp_path / "state")
    yield c
    if c._lock_fd is not None:  # not closed by the test itself
        c.close()


def reopen(cp: Checkpoint) -> Checkpoint:
    cp.close()
    return Checkpoint(cp.state_dir)


def all_catalogue(cp: Checkpoint, limit: int) -> list[tuple[bytes, Catalogued]]:
    out: list[tuple[bytes, Catalogued]] = []
    after = b""
    while batch := cp.catalogue_after(after, limit):
        assert len(batch) <= limit
        out += batch
        after = batch[-1][0]
    return out


def test_second_writer_is_refused_with_directory_named(cp: Checkpoint) -> None:
    with pytest.raises(StateLockedError) as info:
        Checkpoint(cp.state_dir)
    assert str(cp.state_dir) in str(info.value)
    assert isinstance(info.value, StateError)
    # The refused attempt must not have disturbed the holder.
    cp.put_meta("x", {"ok": 1})
    assert cp.get_meta("x") == {"ok": 1}
    # Once the holder closes, the lock is free again.
    cp.close()
    again = Checkpoint(cp.state_dir)
    assert again.get_meta("x") == {"ok": 1}
    again.close()


def test_triage_todo_known_and_done(cp: Checkpoint) -> None:
    known = rec(b"/s/known.dcm", size=10, mtime_ns=111)
    changed = rec(b"/s/changed.dcm", size=20, mtime_ns=222)
    resized = rec(b"/s/resized.dcm", size=30, mtime_ns=333)
    cp.catalogue([known, changed, resized], [])
    # One file already migrated: its index row says size 40, mtime 444.
    cp.commit_objects([({"key": "k/1.tar"}, [{"path_hex": b"/s/done.dcm".hex(), "size": 40,
                                           "mtime_ns": 444, "sop_uid": ""}])])
    entries = [
        FileEntry(b"/s/known.dcm", 10, 111),      # same as catalogued
        FileEntry(b"/s/changed.dcm", 20, 999),    # new mtime: classify again
        FileEntry(b"/s/resized.dcm", 31, 333),    # new size: classify again
        FileEntry(b"/s/new.dcm", 5, 5),           # never seen
        FileEntry(b"/s/done.dcm", 40, 444),       # already stored
        FileEntry(b"/s/caf\xe9.dcm", 1, 1),       # never seen, non-UTF-8
    ]
    cp.commit_objects([({"key": "k/2.tar"}, [{"path_hex": b"/s/redo.dcm".hex(), "size": 1,
                                           "mtime_ns": 1, "sop_uid": ""}])])
    entries.append(FileEntry(b"/s/redo.dcm", 1, 2))  # stored, but modified since
    todo, done, known_n = cp.triage(entries)
    assert [e.path for e in todo] == [b"/s/changed.dcm", b"/s/resized.dcm", b"/s/new.dcm",
                                      b"/s/caf\xe9.dcm", b"/s/redo.dcm"]
    assert (done, known_n) == (1, 1)


def test_catalogue_after_sorted_and_batched(cp: Checkpoint) -> None:
    rng = random.Random(7)
    records = [rec(b"/s/%s/%04d" % (g[:2].encode(), i), group=g)
               for g in GROUPS for i in range(40)]
    records.append(rec(b"/s/\xff\xfe", group=GROUPS[1]))
    shuffled = records[:]
    rng.shuffle(shuffled)
    for i in range(0, len(shuffled), 17):  # several write transactions
        cp.catalogue(shuffled[i:i + 17], [])

    expected = sorted(records, key=lambda r: (r.group, r.path))
    for limit in (1, 7, 40, 1000):
        got = all_catalogue(cp, limit)
        assert [r for _, r in got] == expected, limit
        assert [k for k, _ in got] == [r.group.encode() + b"\0" + r.path for r in expected]
    assert len(cp.catalogue_after(b"", 7)) == 7
    assert cp.catalogue_after(b"\xff" * 40, 10) == []
    assert cp.pending_totals() == (len(records), 100 * len(records))


def test_catalogue_replaces_older_record_and_problems(cp: Checkpoint) -> None:
    path = b"/s/moved.dcm"
    cp.catalogue([rec(path, group=GROUPS[0])], [])
    cp.catalogue([rec(path, group=GROUPS[2], size=7)], [])  # re-classified: another study
    got = all_catalogue(cp, 10)
    assert [(r.path, r.group, r.size) for _, r in got] == [(path, GROUPS[2], 7)]
    assert cp.counts()["pending"] == 1

    # A problem for a catalogued path takes it out of the catalogue...
    cp.catalogue([], [Problem(path, "unreadable", "Permission denied", final=False),
                      Problem(b"/s/link", "symlink not followed")])
    assert all_catalogue(cp, 10) == []
    assert cp.counts()["problems"] == 2
    assert cp.open_problems() == 1
    # ...and a later successful classification clears the problem.
    cp.catalogue([rec(path)], [])
    assert cp.open_problems() == 0
    assert [p for p, _ in cp.iter_db("problems")] == [b"/s/link"]


def test_intents_round_trip(cp: Checkpoint) -> None:
    members = [rec(b"/s/a.dcm", sop="1.1"), rec(b"/s/caf\xe9.dcm", sop="1.2"),
               Catalogued(b"/s/notes.txt", 3, 4, GROUPS[0], UNSORTED, "not DICOM")]
    plan = BundlePlan(GROUPS[0], "tar", members, key="p/00/00/g/abc.tar", bundle_id="abc")
    single = BundlePlan(GROUPS[1], "file", [rec(b"/s/big.dcm", group=GROUPS[1])],
                        key="p/7f/7f/g/def.dcm", bundle_id="def")
    cp.put_intents([plan])
    cp.put_intents([single])
    cp = reopen(cp)
    try:
        got = sorted(cp.intents(), key=lambda p: p.key)
        assert got == [plan, single]
        cp.drop_intent(plan.key)
        assert cp.intents() == [single]
    finally:
        cp.close()


def committed_plan(cp: Checkpoint) -> tuple[BundlePlan, list[dict[str, object]]]:
    members = [rec(b"/s/a.dcm", sop="1.9.1"), rec(b"/s/caf\xe9.dcm", sop="1.9.2"),
               Catalogued(b"/s/notes.txt", 3, 4, GROUPS[0], UNSORTED, "not DICOM")]
    bystander = rec(b"/s/other.dcm", group=GROUPS[2], sop="1.9.3")
    cp.catalogue(members + [bystander], [])
    plan = BundlePlan(GROUPS[0], "tar", members, key="p/00/00/g/abc.tar", bundle_id="abc")
    cp.put_intents([plan])
    entries = [manifest.member_entry(m, name=member_name(m.path), offset=512 * (i + 1),
                                     length=m.size, digest="0" * 64)
               for i, m in enumerate(members)]
    rows = manifest.rows(manifest.parse(manifest.build(plan, entries)))
    return plan, rows


def test_commit_object_is_durable(cp: Checkpoint) -> None:
    plan, rows = committed_plan(cp)
    cp.commit_objects([({"key": plan.key, "size": 4096, "etag": "x"}, rows)])
    cp = reopen(cp)
    try:
        assert cp.has_object(plan.key)
        assert not cp.has_object("p/other.tar")
        assert cp.intents() == []
        # Only the bystander (another study) is still waiting.
        assert [r.path for _, r in all_catalogue(cp, 10)] == [b"/s/other.dcm"]
        assert cp.counts()["pending"] == 1
        for m, row in zip(plan.members, rows):
            stored = cp.index_row(m.path)
            assert stored == json.loads(json.dumps(row))
            assert stored is not None and stored["key"] == plan.key
        with cp.env.begin(db=cp.db["sop"]) as txn:
            assert txn.get(b"1.9.1") == b"/s/a.dcm"
            assert txn.get(b"1.9.2") == b"/s/caf\xe9.dcm"
            assert txn.get(b"1.9.3") is None  # not committed
        assert cp.counts()["sop"] == 2  # the unsorted member has no SOP UID
        assert [p for p, _ in cp.iter_db("index")] == sorted(m.path for m in plan.members)
        # A rescan now sees the stored files as done.
        todo, done, known = cp.triage([FileEntry(m.path, m.size, m.mtime_ns)
                                       for m in plan.members])
        assert (todo, done, known) == ([], 3, 0)
    finally:
        cp.close()


def test_iter_db_streams_past_batch_boundary(cp: Checkpoint) -> None:
    n = 4321
    records = [rec(b"/s/%06d" % i, group=GROUPS[i % 3], size=i) for i in range(n)]
    for i in range(0, n, 1000):
        cp.catalogue(records[i:i + 1000], [])
    keys = sorted(r.group.encode() + b"\0" + r.path for r in records)
    for batch in (2000, 1000, 7, 1):
        got = list(cp.iter_db("catalogue", batch=batch))
        assert [k for k, _ in got] == keys, batch
    got = list(cp.iter_db("catalogue"))
    assert {v["size"] for _, v in got} == set(range(n))
    assert list(cp.iter_db("objects")) == []
    # Exactly one full batch: the second (empty) read must not repeat or lose rows.
    small = Checkpoint(cp.state_dir.parent / "small")
    try:
        small.catalogue(records[:2000], [])
        assert len(list(small.iter_db("catalogue"))) == 2000
    finally:
        small.close()


def test_async_call_runs_on_the_writer_thread(cp: Checkpoint) -> None:
    async def go() -> object:
        await cp.call(cp.put_meta, "secret", "abc")
        return await cp.call(cp.get_meta, "secret")
    assert asyncio.run(go()) == "abc"
    assert cp.get_meta("missing") is None


_READER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from pacsmigrate.checkpoint import Checkpoint
    cp = Checkpoint(Path(sys.argv[1]), readonly=True)
    print(json.dumps({"counts": cp.counts(), "meta": cp.get_meta("run"),
                      "row": cp.index_row(b"/s/a.dcm")}))
    cp.close()
""")


def test_readonly_reader_while_writer_holds_lock(cp: Checkpoint) -> None:
    plan, rows = committed_plan(cp)
    cp.commit_objects([({"key": plan.key}, rows)])
    cp.put_meta("run", {"n": 1})
    # A separate process, as `pacsmigrate report` would be beside a running migrate.
    proc = subprocess.run([sys.executable, "-c", _READER, str(cp.state_dir)],
                          check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["meta"] == {"n": 1}
    assert got["counts"]["objects"] == 1 and got["counts"]["index"] == 3
    assert got["row"]["key"] == plan.key
    # The writer still holds its lock and keeps working.
    with pytest.raises(StateLockedError):
        Checkpoint(cp.state_dir)
    cp.put_meta("run", {"n": 2})
    assert cp.get_meta("run") == {"n": 2}
