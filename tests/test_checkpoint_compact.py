"""The LMDB checkpoint: compaction packs pages and keeps every row (and, without room or
failing midway, leaves the state whole); rows written in batches keep the row-by-row rules,
duplicates may name an object committed after them, and rows read back past the decode
cache and through the raw filter."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import checkpoint_support
import lmdb
import pytest
from checkpoint_support import GROUPS, about, member, stored

from pacsmigrate import rows, stateread
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.errors import NoRoomToCompactError, StateError
from pacsmigrate.lmdbfile import LOW_SPACE
from pacsmigrate.records import UNSORTED, Described, Entry, Member, Problem

# A writer on a fresh state directory: a fixture defined once in checkpoint_support.
cp = checkpoint_support.cp


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
