"""The LMDB checkpoint in a real state directory: lock, intents, commits, spill, plan."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from pacsmigrate import rows, stateread
from pacsmigrate.checkpoint import Checkpoint, path_key
from pacsmigrate.errors import NoRoomToCompactError, StateError, StateLockedError
from pacsmigrate.lmdbfile import LOW_SPACE
from pacsmigrate.records import (
    DICOM,
    UNSORTED,
    BundlePlan,
    Described,
    Entry,
    Member,
    Problem,
    StoredObject,
)

GROUPS = ["0" * 32, "7f" * 16, "ff" * 16]


def about(group: str = GROUPS[0], sop: str = "1.2.3.4.5") -> Described:
    return Described(group, DICOM, "", "1.2.3", "1.2.3.4", sop, "CT", "20240101",
                     "1.2.840.10008.1.2.1")


def member(path: bytes, group: str = GROUPS[0], size: int = 100, mtime_ns: int = 1000,
           sop: str = "") -> Member:
    return Member(path, size, mtime_ns, about(group, sop or "1.2.3.4." + str(len(path))))


def stored(key: str, members: list[Member], group: str = GROUPS[0]) -> StoredObject:
    entries = tuple(Entry(m.path, 512 * (i + 1), m.size, f"{i + 1:064x}", m.size, m.mtime_ns,
                          m.about) for i, m in enumerate(members))
    return StoredObject(key, "tar", group, key.rsplit("/", 1)[1], 4096, "etag", "2026-01-01",
                        entries)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Checkpoint]:
    c = Checkpoint(tmp_path / "state")
    yield c
    if c._lock_fd is not None:  # not closed by the test itself
        c.close()


def reopen(cp: Checkpoint) -> Checkpoint:
    cp.close()
    return Checkpoint(cp.state_dir)


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


def test_compact_packs_pages_and_keeps_every_row(cp: Checkpoint) -> None:
    order = list(range(6000))
    random.Random(3).shuffle(order)  # rows arrive in the order the store acknowledges
    for i in range(0, len(order), 200):
        # SOP UIDs without order, as 2.25 (UUID) UIDs are: they go to the SOP log
        cp.commit_objects([stored(f"p/00/00/g/{i}.tar", [
            member(b"/s/%06d/%06d" % (j % 97, j), sop=f"2.25.{j * 2654435761 % 2**32}")
            for j in order[i:i + 200]])])
    cp.put_meta("run", {"n": 7})
    cp.record_problems([Problem(b"/s/odd", "unreadable", final=False)])
    before = {name: list(cp.iter_db(name)) for name in ("index", "objects", "problems")}
    sops = cp.sop_log_rows()  # merged into the sop table by the compaction
    assert sops == 6000 and cp.counts()["sop"] == 0
    size = (cp.state_dir / "checkpoint.lmdb" / "data.mdb").stat().st_size
    need = cp.in_use()  # what compact asks the file system for (beside a margin)
    saved = cp.compact()
    after = (cp.state_dir / "checkpoint.lmdb" / "data.mdb").stat().st_size
    # (the SOP rows were appended to their log: pages already full, unlike the index's)
    assert saved == size - after and after < 0.9 * size
    assert after <= need + LOW_SPACE and need < size  # the copy fits in what was asked for
    assert {name: list(cp.iter_db(name)) for name in before} == before
    assert cp.counts()["sop"] == sops and cp.get_meta("run") == {"n": 7}
    assert cp.sop_log_rows() == 0 and cp.path_for_sop(f"2.25.{5 * 2654435761 % 2**32}") \
        == b"/s/000005/000005"
    assert not (cp.state_dir / "checkpoint.compact").exists()
    cp.commit_objects([stored("p/00/00/g/late.tar", [member(b"/s/late")])])  # still writable
    assert cp.index_row(b"/s/late") is not None


def test_a_duplicate_may_name_an_object_committed_after_it(tmp_path: Path) -> None:
    """An index rebuilt from the store meets objects in key order: a copy's bundle may come
    before the object holding its bytes; both then agree on that object's number."""
    from pacsmigrate.records import Described, Entry, StoredObject

    about = Described("g")
    cp = Checkpoint(tmp_path / "s")
    try:
        copy = Entry(b"/pacs/copy.dcm", 1536, 10, "ab" * 32, 10, 1, about, duplicate_of="b.tar")
        cp.commit_objects([StoredObject("a.tar", "tar", "g", "a", 4096, "e1", "", (copy,))])
        original = Entry(b"/pacs/orig.dcm", 1536, 10, "ab" * 32, 10, 1, about)
        cp.commit_objects([StoredObject("b.tar", "tar", "g", "b", 8192, "e2", "", (original,))])
        row = cp.index_row(b"/pacs/copy.dcm")
        assert row is not None and (row["key"], row["duplicate_of"]) == ("b.tar", "b.tar")
        assert cp.index_row(b"/pacs/orig.dcm")["duplicate_of"] == ""  # type: ignore[index]
        found = cp.stored_content(about, "ab" * 32)
        assert found is not None and (found.key, found.offset, found.length) == ("b.tar", 1536, 10)
        assert cp.object_record("b.tar")["id"] == 2  # type: ignore[index]
        assert cp.deduplicated() == (1, 10)
    finally:
        cp.close()


def test_rows_name_their_objects_past_the_decode_cache(cp: Checkpoint,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding rows remembers a few thousand objects' keys and locks (memory stays flat at
    any size); past that the cache starts again and every row still names its object."""
    monkeypatch.setattr(stateread, "DECODE_CACHE", 3)
    for i in range(10):
        cp.commit_objects([stored(f"p/00/00/g/{i}.tar", [member(b"/s/%02d/%d" % (i, j))
                                                         for j in range(2)])])
    got = {k: r["key"] for k, r in cp.iter_db("index")}
    assert got == {b"/s/%02d/%d" % (i, j): f"p/00/00/g/{i}.tar"
                   for i in range(10) for j in range(2)}
    assert len(cp._keys) <= 3 and len(cp._locks) <= 3


def test_iter_db_keeps_what_the_raw_filter_accepts_across_batches(cp: Checkpoint) -> None:
    """The report lists unsorted files among millions without decoding every row."""
    odd = Described(GROUPS[1], UNSORTED, "not DICOM", "", "", "", "", "", "")
    files = [Member(b"/s/%04d" % i, 10, 1, odd if i % 7 == 0 else about(sop=f"1.2.{i}"))
             for i in range(50)]
    cp.commit_objects([stored("p/00/00/g/a.tar", files)])
    want = [b"/s/%04d" % i for i in range(0, 50, 7)]
    for batch in (1000, 6, 1):
        got = list(cp.iter_db("index", batch=batch, keep=rows.unsorted))
        assert [k for k, _ in got] == want, batch
        assert all(r["status"] == UNSORTED and r["reason"] == "not DICOM" for _, r in got)
    assert rows.unsorted(b'{"status": "unsorted"}') and not rows.unsorted(b'{"status": "dicom"}')


def test_batched_rows_keep_the_row_by_row_rules(cp: Checkpoint) -> None:
    """commit_objects writes each table's rows in one call (putmulti); what a row meets
    already there is still handled row by row: a SOPInstanceUID at another path with other
    bytes, in the same object or an earlier one, is listed as a conflict and points at the
    latest path; content already stored is re-pointed only at bytes locked longer."""
    from pacsmigrate.records import Entry, StoredObject

    def entry(path: bytes, digest: str, sop: str) -> Entry:
        return Entry(path, 512, 10, digest, 10, 1, about(sop=sop))

    first = StoredObject("p/a.tar", "tar", GROUPS[0], "a", 4096, "e", "", (
        entry(b"/s/a1", "01" * 32, "1.9.1"), entry(b"/s/a2", "02" * 32, "1.9.1"),
        entry(b"/s/a3", "03" * 32, "1.9.3")))
    cp.commit_objects([first])
    assert cp.path_for_sop("1.9.1") == b"/s/a2"
    assert {k for k, _ in cp.iter_db("conflicts")} == {b"/s/a2"}
    # Later: the SOP of a3 at another path with other bytes; a1's content again, in an
    # object locked until 2060 (the first had no lock): the content row moves to it.
    locked = {"retain_until": "2060-01-01", "mode": "COMPLIANCE"}
    second = StoredObject("p/b.tar", "tar", GROUPS[0], "b", 4096, "e", "", (
        entry(b"/s/b3", "04" * 32, "1.9.3"), entry(b"/s/b1", "01" * 32, "1.9.4")),
        retention=locked)
    cp.commit_objects([second])
    assert cp.path_for_sop("1.9.3") == b"/s/b3"
    assert {k for k, _ in cp.iter_db("conflicts")} == {b"/s/a2", b"/s/b3"}
    found = cp.stored_content(about(), "01" * 32)
    assert found is not None and found.key == "p/b.tar"
    # The unlocked copy again: the longer-locked bytes stay the ones copies point at.
    cp.commit_objects([StoredObject("p/c.tar", "tar", GROUPS[0], "c", 4096, "e", "", (
        entry(b"/s/c1", "01" * 32, "1.9.5"),))])
    found = cp.stored_content(about(), "01" * 32)
    assert found is not None and found.key == "p/b.tar"
    assert cp.stored_content(about(), "03" * 32) is not None
    assert cp.stored_content(about(), "05" * 32) is None


def test_compact_without_room_for_the_copy_changes_nothing(
        cp: Checkpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    cp.commit_objects([stored("p/00/00/g/a.tar", [member(b"/s/%04d" % j) for j in range(300)])])
    data = cp.state_dir / "checkpoint.lmdb" / "data.mdb"
    size, rows = data.stat().st_size, list(cp.iter_db("index"))
    free = shutil.disk_usage(cp.state_dir).free
    monkeypatch.setattr(type(cp), "in_use", lambda self: free)  # needs more than is free
    with pytest.raises(NoRoomToCompactError, match=r"^no room to compact the checkpoint: "
                       r"the copy needs up to \d+ MiB, \d+ MiB are free$"):
        cp.compact()
    assert data.stat().st_size == size and list(cp.iter_db("index")) == rows
    assert not (cp.state_dir / "checkpoint.compact").exists()
    cp.commit_objects([stored("p/00/00/g/b.tar", [member(b"/s/late")])])  # still writable
    assert cp.index_row(b"/s/late") is not None


@pytest.mark.parametrize("disk_full", [True, False])
def test_compact_that_fails_midway_leaves_the_state_whole(
        cp: Checkpoint, monkeypatch: pytest.MonkeyPatch, disk_full: bool) -> None:
    # The copy fails: because the disk filled up meanwhile (no room, the run goes on), or
    # for another reason, a damaged page read (an error that stops the run).
    cp.commit_objects([stored("p/00/00/g/a.tar", [member(b"/s/%04d" % j) for j in range(300)])])
    data = cp.state_dir / "checkpoint.lmdb" / "data.mdb"
    size, rows = data.stat().st_size, list(cp.iter_db("index"))
    real = shutil.disk_usage(cp.state_dir)
    copy_dir = cp.state_dir / "checkpoint.compact"

    def usage(path: Any) -> Any:  # the partial copy is what fills the disk
        full = disk_full and copy_dir.exists()
        return real._replace(free=LOW_SPACE // 2) if full else real
    monkeypatch.setattr(shutil, "disk_usage", usage)

    def copy(self: Checkpoint, name: str, out: Any) -> None:
        out.open_db(name.encode())
        raise (lmdb.DiskError if disk_full else lmdb.CorruptedError)("injected")
    monkeypatch.setattr(Checkpoint, "_copy_table", copy)
    with pytest.raises(StateError) as caught:
        cp.compact()
    assert isinstance(caught.value, NoRoomToCompactError) == disk_full
    assert str(caught.value).startswith("no room to compact the checkpoint: the disk filled "
                                        "up" if disk_full else "cannot compact the checkpoint")
    monkeypatch.undo()
    assert data.stat().st_size == size and list(cp.iter_db("index")) == rows
    assert not (cp.state_dir / "checkpoint.compact").exists()
