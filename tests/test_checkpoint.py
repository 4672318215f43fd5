"""The LMDB checkpoint in a real state directory: lock, intents, commits, spill, plan.

This file: the lock (a second writer refused, a read-only reader beside the writer),
problems, intents, committed objects and their rows, long paths, spill and plan, rows of
version 1, streaming the tables, calls on the writer thread. Compaction and rows written in
batches are in test_checkpoint_compact.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import checkpoint_support
import pytest
from checkpoint_support import GROUPS, about, member, reopen, stored

from pacsmigrate import rows
from pacsmigrate.checkpoint import Checkpoint, path_key
from pacsmigrate.errors import StateError, StateLockedError
from pacsmigrate.records import UNSORTED, BundlePlan, Described, Entry, Member, Problem

# A writer on a fresh state directory: a fixture defined once in checkpoint_support.
cp = checkpoint_support.cp


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


def test_problems_recorded_then_cleared_by_a_commit(cp: Checkpoint) -> None:
    path = b"/s/flaky.dcm"
    cp.record_problems([Problem(path, "unreadable", "Permission denied", final=False),
                        Problem(b"/s/link", "symlink not followed")])
    assert cp.counts()["problems"] == 2
    assert cp.open_problems() == 1
    cp.commit_objects([stored("p/00/00/g/abc.tar", [member(path)])])
    assert cp.open_problems() == 0
    assert [p for p, _ in cp.iter_db("problems")] == [b"/s/link"]


def test_intents_round_trip(cp: Checkpoint) -> None:
    tar = BundlePlan(GROUPS[0], "tar", key="p/00/00/g/abc.tar", bundle_id="abc")
    tar.add(member(b"/s/a.dcm"))
    big = member(b"/s/caf\xe9-big.dcm", group=GROUPS[1], size=1 << 30)
    single = BundlePlan(GROUPS[1], "file", key="p/7f/7f/g/def.dcm", bundle_id="def")
    single.add(big)
    cp.put_intents([tar, single])
    cp = reopen(cp)
    try:
        got = sorted(cp.intents(), key=lambda p: p.key)
        assert [(p.key, p.kind, p.group, p.bundle_id) for p in got] == [
            (tar.key, "tar", tar.group, "abc"), (single.key, "file", single.group, "def")]
        # A raw file's intent carries its member (its manifest is not inside the object).
        assert got[0].members == [] and got[1].members == [big]
        cp.drop_intent(tar.key)
        assert [p.key for p in cp.intents()] == [single.key]
    finally:
        cp.close()


def test_commit_object_is_durable_and_rows_read_back(cp: Checkpoint) -> None:
    members = [member(b"/s/a.dcm", sop="1.9.1"), member(b"/s/caf\xe9.dcm", sop="1.9.2"),
               Member(b"/s/notes.txt", 3, 4, Described(GROUPS[0], UNSORTED, "not DICOM"))]
    obj = stored("p/00/00/g/abc.tar", members)
    plan = BundlePlan(GROUPS[0], "tar", key=obj.key, bundle_id="abc")
    cp.put_intents([plan])
    cp.spill([member(b"/s/a.dcm", sop="1.9.1"), member(b"/s/zz.dcm", group=GROUPS[2])])
    cp.commit_objects([obj])
    cp = reopen(cp)
    try:
        assert cp.has_object(obj.key) and not cp.has_object("p/other.tar")
        assert cp.intents() == []
        record = cp.object_record(obj.key)
        assert record is not None and (record["members"], record["size"]) == (3, 4096)
        for e in obj.entries:
            row = cp.index_row(e.path)
            assert row is not None
            assert {**rows.as_dict(e, obj.key), "retain_until": "", "lock_mode": ""} == row
        assert cp.path_for_sop("1.9.1") == b"/s/a.dcm"
        assert cp.path_for_sop("1.9.2") == b"/s/caf\xe9.dcm"
        assert cp.path_for_sop("1.9.3") is None
        assert cp.counts()["sop"] == 2  # the unsorted member has no SOP UID
        assert [p for p, _ in cp.iter_db("index")] == sorted(m.path for m in members)
        # A re-run's triage sees the stored files with their size and mtime.
        assert cp.migrated([m.path for m in members] + [b"/s/new.dcm"]) == [
            (m.size, m.mtime_ns) for m in members] + [None]
        # The committed file left the spill; the other study's stays.
        assert [v["source_path"] for _, v in cp.iter_db("spill")] == ["/s/zz.dcm"]
        assert cp.group_entries() == 1
    finally:
        cp.close()


def test_objects_get_numbers_once(cp: Checkpoint) -> None:
    a = stored("p/00/00/g/a.tar", [member(b"/s/a")])
    b = stored("p/00/00/g/b.tar", [member(b"/s/b")])
    cp.commit_objects([a, b])
    cp.commit_objects([a])  # adopted again (a rebuild, a second reconcile): same number
    numbers = {cp.object_record(k)["id"] for k in (a.key, b.key)}  # type: ignore[index]
    assert numbers == {1, 2}
    assert cp.index_row(b"/s/a")["key"] == a.key  # type: ignore[index]


def test_long_paths_are_keyed_by_hash_and_kept_whole(cp: Checkpoint) -> None:
    long = b"/s/" + b"d" * 300 + b"/" + b"f" * 300 + b".dcm"
    assert path_key(long) != long
    obj = stored("p/00/00/g/a.tar", [member(long)])
    cp.commit_objects([obj])
    row = cp.index_row(long)
    assert row is not None and row["source_path"] == long.decode()
    assert cp.migrated([long]) == [(100, 1000)]
    assert cp.path_for_sop(obj.entries[0].about.sop_uid) == long


def test_spill_in_group_order_and_unspill(cp: Checkpoint) -> None:
    spilled = [member(b"/s/%03d" % i, group=GROUPS[i % 3], size=i) for i in range(30)]
    cp.spill(spilled[:17])
    cp.spill(spilled[17:])
    got: list[tuple[bytes, Member]] = []
    after = b""
    while batch := cp.spill_after(after, 7):
        assert len(batch) <= 7
        got += batch
        after = batch[-1][0]
    assert [m.group for _, m in got] == sorted(m.group for m in spilled)
    assert sorted((m.path, m.size, m.about) for _, m in got) == sorted(
        (m.path, m.size, m.about) for m in spilled)
    assert cp.spilled_groups([GROUPS[1], "ab" * 16]) == {GROUPS[1]}
    cp.unspill([m for m in spilled if m.group == GROUPS[0]])
    assert cp.spilled_groups(GROUPS) == {GROUPS[1], GROUPS[2]}
    cp.clear("spill")
    assert cp.counts()["spill"] == 0


def test_plan_keeps_the_dry_runs_hashes(cp: Checkpoint) -> None:
    e = Entry(b"/s/a.dcm", 0, 10, "ab" * 32, 10, 77, about())
    cp.record_plan([e])
    assert cp.planned_hashes([b"/s/a.dcm", b"/s/b.dcm"]) == [(10, 77, "ab" * 32), None]
    ((_, row),) = list(cp.iter_db("plan"))
    assert row["blake3"] == "ab" * 32 and row["key"] == "" and row["study_uid"] == "1.2.3"
    cp.clear("plan")
    assert cp.counts()["plan"] == 0


def test_rows_written_by_version_1_still_read(cp: Checkpoint) -> None:
    old = {"source_path": "/s/old.dcm", "source_path_b64": "", "key": "p/old.tar",
           "offset": 512, "length": 9, "blake3": "0" * 64, "size": 9, "mtime_ns": 5,
           "status": "dicom", "reason": "", "path_hex": b"/s/old.dcm".hex()}
    with cp.env.begin(write=True) as txn:
        txn.put(b"/s/old.dcm", json.dumps(old).encode(), db=cp.db["index"])
        txn.put(b"1.2.3.99", b"/s/old.dcm", db=cp.db["sop"])
    assert cp.index_row(b"/s/old.dcm") == old
    assert cp.migrated([b"/s/old.dcm"]) == [(9, 5)]
    assert cp.path_for_sop("1.2.3.99") == b"/s/old.dcm"


def test_iter_db_streams_past_batch_boundary(cp: Checkpoint) -> None:
    n = 4321
    for i in range(0, n, 1000):
        cp.commit_objects([stored(f"p/00/00/g/{i}.tar",
                                  [member(b"/s/%06d" % j) for j in range(i, min(n, i + 1000))])])
    keys = [b"/s/%06d" % j for j in range(n)]
    for batch in (2000, 1000, 7, 1):
        got = list(cp.iter_db("index", batch=batch))
        assert [k for k, _ in got] == keys, batch
    assert len(list(cp.iter_db("objects"))) == 5


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
    obj = stored("p/00/00/g/abc.tar", [member(b"/s/a.dcm"), member(b"/s/b.dcm")])
    cp.commit_objects([obj])
    cp.put_meta("run", {"n": 1})
    # A separate process, as `pacsmigrate status` would be beside a running migrate.
    proc = subprocess.run([sys.executable, "-c", _READER, str(cp.state_dir)],
                          check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["meta"] == {"n": 1}
    assert got["counts"]["objects"] == 1 and got["counts"]["index"] == 2
    assert got["row"]["key"] == obj.key
    # The writer still holds its lock and keeps working.
    with pytest.raises(StateLockedError):
        Checkpoint(cp.state_dir)
    cp.put_meta("run", {"n": 2})
    assert cp.get_meta("run") == {"n": 2}
