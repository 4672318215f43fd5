"""A commit's dirty pages stay bounded as the state grows: LMDB keeps the pages a write
transaction dirtied allocated for the next one, so the largest commit sets the run's memory
(lmdbfile.rows_within, Checkpoint.commit_files, the sink's commit GroupWriter)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from conftest import S3Target, run
from helpers import MiB, config

from pacsmigrate import checkpoint, migrate
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.config import TransferConfig
from pacsmigrate.lmdbfile import rows_within
from pacsmigrate.records import DICOM, Described, Entry, StoredObject
from pacsmigrate.synth import make_tree


def touched(k: int, leaves: list[int]) -> float:
    return sum(n * (1 - math.exp(-k / n)) for n in leaves if n)


def test_rows_within_is_the_most_rows_whose_expected_pages_fit() -> None:
    assert rows_within(4096, [1000, 3000]) is None  # every page fits: any number of rows
    for leaves in ([5000, 0], [6000, 8000], [23_000, 30_000], [10**7, 10**7]):
        k = rows_within(4096, leaves)
        assert k is not None and touched(k, leaves) <= 4096 < touched(k + 1, leaves)
    # Larger tables, fewer rows: down to a page a row in each table.
    ks = [rows_within(4096, [n, n]) or 0 for n in (3000, 30_000, 300_000, 3_000_000)]
    assert ks == sorted(ks, reverse=True) and ks[0] == 3443 and 2048 <= ks[-1] <= 2052


def test_the_model_matches_random_keys_thrown_at_pages() -> None:
    """k random keys into L pages touch L(1 - e^(-k/L)) of them (simulated)."""
    rnd = random.Random(5)
    for pages in (20_000, 200_000):
        k = rows_within(4096, [pages])
        assert k is not None
        hit = len({rnd.randrange(pages) for _ in range(k)})
        assert abs(hit - 4096) < 0.03 * 4096


def stored(n: int, files: int) -> StoredObject:
    entries = []
    for i in range(files):
        sop = f"1.2.826.0.1.3680043.8.498.{n}.{i}"
        about = Described(f"{n:032x}", DICOM, "", "1.2.3", "1.2.3.4", sop, "CT", "20240101",
                          "1.2.840.10008.1.2.1")
        digest = f"{random.Random(n * 100_000 + i).getrandbits(256):064x}"
        entries.append(Entry(b"/s/%d/%d" % (n, i), 512 * (2 * i + 1), 100, digest, 100, 1,
                             about))
    return StoredObject(f"k/{n}.tar", "tar", f"{n:032x}", f"b{n}", 4096, "etag", "",
                        tuple(entries))


def test_commit_files_falls_as_the_hashed_tables_grow(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "COMMIT_PAGES", 16)
    cp = Checkpoint(tmp_path / "state")
    try:
        assert cp.commit_files() is None  # empty tables: no bound
        seen = []
        for n in range(8):
            cp.commit_objects([stored(n, 500)])
            seen.append(cp.commit_files())
        with cp.env.begin() as txn:
            # (the sop table takes its rows at the end of a run, through its log)
            leaves = [txn.stat(cp.db[name])["leaf_pages"] for name in ("content",)]
        assert sum(leaves) > 16 and seen[-1] == rows_within(16, leaves)
        bounded = [k for k in seen if k is not None]
        assert bounded == sorted(bounded, reverse=True) and bounded[-1] < 500
    finally:
        cp.close()
    again = Checkpoint(tmp_path / "state")  # known again before the first commit
    try:
        assert again.commit_files() == seen[-1]
    finally:
        again.close()


def test_a_run_commits_no_more_than_the_checkpoint_allows(moto_s3: S3Target, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """With no page to spare, and a state that already holds rows, every commit holds
    one object: the sink asks the checkpoint before each transaction, however many
    acknowledged objects wait for it (unbounded, the objects of this small tree are all
    acknowledged within one linger, and committed together)."""
    monkeypatch.setattr(checkpoint, "COMMIT_PAGES", 0)
    calls: list[int] = []
    commit = Checkpoint.commit_objects

    def counting(self: Checkpoint, objects: list[StoredObject]) -> None:
        calls.append(len(objects))
        commit(self, objects)
    tree = tmp_path / "nas"
    make_tree(tree / "a", studies=2, seed=3, layout="date", scale=0.05)
    cfg = config([tree], moto_s3.url, tmp_path / "state", moto_s3.info.endpoint_url,
                 bundle_size=2 * MiB, large_file=1 * MiB,
                 transfer=TransferConfig(part_size=5 * MiB, concurrency=16))
    run(migrate(cfg))  # an earlier run: the state holds rows now
    make_tree(tree / "b", studies=12, seed=4, layout="date", scale=0.05)
    monkeypatch.setattr(Checkpoint, "commit_objects", counting)
    stats = run(migrate(cfg))
    assert stats.not_migrated == 0 and stats.objects_uploaded >= 12
    assert sum(calls) == stats.objects_uploaded and all(n == 1 for n in calls)
    assert stats.commit_transactions == len(calls)
