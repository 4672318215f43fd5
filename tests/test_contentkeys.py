"""The content table's keys (deduplication): a DICOM file's digest behind 4 bytes of its
study, so the rows one commit adds sit together; states made before that keep finding the
copies their rows (keyed by the digest alone) describe, in later runs and merged."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import lmdb
from conftest import S3Target, run_cli
from helpers import about_row, assert_complete, index_rows

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.records import DICOM, UNSORTED, Described, Entry, StoredObject
from pacsmigrate.synth import make_tree
from pacsmigrate.tables import BY_STUDY, CONTENT_KEYS, content_key

GROUPS = ["0a" * 16, "5c" * 16, "e3" * 16]


def _entries(group: str, n: int, rng: random.Random, status: str = DICOM) -> list[Entry]:
    about = Described(group, status, "", "1.2.3", "1.2.3.4", "", "CT", "20240101", "")
    return [Entry(f"/pacs/{group[:4]}/{i}".encode(), 512 * i, 100, rng.randbytes(32).hex(),
                  100, 1, about) for i in range(n)]


def test_a_studys_content_rows_sit_together_and_other_files_by_digest(tmp_path: Path) -> None:
    rng = random.Random(5)
    studies = {g: _entries(g, 40, rng) for g in GROUPS}
    mixed = [e for trio in zip(*studies.values(), strict=True) for e in trio]  # a pack
    loose = _entries("f0" * 16, 3, rng, status=UNSORTED)  # not DICOM: its folder's group
    cp = Checkpoint(tmp_path / "s")
    try:
        assert cp.get_meta(CONTENT_KEYS) == BY_STUDY and not cp.bare_content
        cp.commit_objects([StoredObject("k/p.tar", "tar", GROUPS[0], "p", 65536, "e", "",
                                        (*mixed, *loose))])
        with cp.env.begin(db=cp.db["content"]) as txn:
            keys = [bytes(k) for k, _ in txn.cursor()]
        # In key order the rows of each study form one run (one page or two, not a page
        # each): a commit of a study's files dirties few pages however large the table.
        of = {content_key(e.about, e.blake3): e.about.group for e in mixed}
        order = [of[k] for k in keys if k in of]
        runs = [g for i, g in enumerate(order) if i == 0 or g != order[i - 1]]
        assert sorted(runs) == sorted(GROUPS) and len(order) == len(mixed)
        assert {bytes.fromhex(e.blake3) for e in loose} <= set(keys)
        # Copies meet: a DICOM file by its study, any other file from any folder.
        for e in (mixed[0], mixed[-1]):
            found = cp.stored_content(e.about, e.blake3)
            assert found is not None and (found.key, found.offset) == ("k/p.tar", e.offset)
        elsewhere = Described("99" * 16, UNSORTED)
        found = cp.stored_content(elsewhere, loose[1].blake3)
        assert found is not None and found.offset == loose[1].offset
        assert cp.stored_content(mixed[0].about, rng.randbytes(32).hex()) is None
    finally:
        cp.close()


def test_a_study_without_rows_is_answered_by_one_seek_and_a_bare_neighbour_fools_none(
        tmp_path: Path) -> None:
    """stored_contents skips the lookups of a study no row has (one seek for its 4
    bytes). A non-DICOM file's row keyed by a digest that begins with those 4 bytes makes
    the study look present: its files are then looked up one by one, and still found or
    not found as they are."""
    rng = random.Random(9)
    stored, absent = _entries(GROUPS[0], 5, rng), _entries(GROUPS[1], 5, rng)
    neighbour = content_key(absent[0].about, absent[0].blake3)[:4] + rng.randbytes(28)
    loose = Entry(b"/pacs/loose", 0, 100, neighbour.hex(), 100, 1,
                  Described("f0" * 16, UNSORTED))
    cp = Checkpoint(tmp_path / "s")
    try:
        asked = [(e.about, e.blake3) for e in stored + absent]
        cp.commit_objects([StoredObject("k/a.tar", "tar", GROUPS[0], "a", 65536, "e", "",
                                        tuple(stored))])
        found = cp.stored_contents(asked)
        assert set(found) == {e.blake3 for e in stored}
        assert [found[e.blake3].offset for e in stored] == [e.offset for e in stored]
        cp.commit_objects([StoredObject("k/b.tar", "tar", "f0" * 16, "b", 65536, "e", "",
                                        (loose,))])
        with cp.env.begin(db=cp.db["content"]) as txn:  # the neighbour sits in its range
            cur = txn.cursor()
            assert cur.set_range(neighbour[:4]) and bytes(cur.key()) == neighbour
        assert set(cp.stored_contents(asked)) == {e.blake3 for e in stored}
        assert cp.stored_content(Described("99" * 16, UNSORTED), loose.blake3) is not None
        # A copy of an absent study's file stored now is found at once.
        cp.commit_objects([StoredObject("k/c.tar", "tar", GROUPS[1], "c", 65536, "e", "",
                                        tuple(absent[1:2]))])
        again = cp.stored_contents(asked)
        assert set(again) == {e.blake3 for e in stored} | {absent[1].blake3}
        assert again[absent[1].blake3].key == "k/c.tar"
    finally:
        cp.close()


def _as_before(state: Path) -> int:
    """Make a state look as a version before study-keyed content rows left it: every
    content row keyed by its digest alone, no content_keys in meta. Returns the rows."""
    env = lmdb.open(str(state / "checkpoint.lmdb"), max_dbs=20, subdir=True)
    try:
        content, meta = env.open_db(b"content"), env.open_db(b"meta")
        with env.begin(write=True) as txn:
            rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=content)]
            txn.drop(content, delete=False)
            for k, v in rows:
                txn.put(k[-32:] if len(k) == 36 else k, v, db=content)
            txn.delete(CONTENT_KEYS.encode(), db=meta)
    finally:
        env.close()
    return len(rows)


def _migrate(s3: S3Target, root: Path, state: Path, *extra: str) -> None:
    run_cli("migrate", str(root), s3.url, "--endpoint-url", s3.info.endpoint_url,
            "--state", str(state), "--no-progress", *extra, env=s3.env(), check=True)


def _copy(study: Path, to: Path) -> list[Path]:
    shutil.copytree(study, to)
    return sorted(p for p in to.rglob("*") if p.is_file())


def test_a_state_from_before_still_finds_the_copies_it_stored(moto_s3: S3Target,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root / "a", studies=2, seed=61, layout="patient", scale=0.05)
    state = tmp_path / "state"
    _migrate(moto_s3, root, state)
    assert _as_before(state) > 0
    study = next(p.parent for p in sorted((root / "a").rglob("*")) if p.is_file())
    copies = _copy(study, root / "again")
    _migrate(moto_s3, root, state)
    rows = {r["source_path"]: r for r in index_rows(state)}
    assert all(rows[str(p)]["duplicate_of"] for p in copies)  # met through the old keys
    cp = Checkpoint(state, readonly=True)
    try:
        assert cp.bare_content and cp.get_meta(CONTENT_KEYS) is None  # stays a mixed state
    finally:
        cp.close()
    # Rows the new run wrote (study-keyed) are met too.
    later = _copy(root / "again", root / "later")
    _migrate(moto_s3, root, state)
    rows = {r["source_path"]: r for r in index_rows(state)}
    assert all(rows[str(p)]["duplicate_of"] for p in later)
    assert_complete(moto_s3, state, root)


def test_merging_a_state_from_before_keeps_its_copies_found(moto_s3: S3Target,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root / "a", studies=4, seed=62, layout="patient", scale=0.05)
    slices = [tmp_path / f"slice{k}" for k in range(2)]
    for k, state in enumerate(slices):
        _migrate(moto_s3, root, state, "--shard", f"{k}/2")
    assert _as_before(slices[1]) > 0
    merged = tmp_path / "merged"
    run_cli("index", "merge", *map(str, slices), "--state", str(merged), check=True)
    cp = Checkpoint(merged, readonly=True)
    try:
        assert cp.bare_content and cp.get_meta(CONTENT_KEYS) is None
        for state in slices:
            for r in index_rows(state):
                found = cp.stored_content(about_row(cp, r), r["blake3"])
                assert found is not None and found.offset == int(r["offset"]), r["source_path"]
    finally:
        cp.close()
    fresh = tmp_path / "merged-new"  # slices of this version: keyed by study, said so
    run_cli("index", "merge", str(slices[0]), "--state", str(fresh), check=True)
    cp = Checkpoint(fresh, readonly=True)
    try:
        assert not cp.bare_content and os.path.isdir(fresh)
    finally:
        cp.close()
