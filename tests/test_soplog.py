"""The SOP table through its log (soplog.py): commits append, the end of a run merges.

Both merges (the direct one in sorted batches, and the compaction's external sort) must
give what a reference model of the rule gives: rows applied in commit order, the newest
path of a UID wins, a path displacing another with other bytes is a conflict. Kills in
the middle of either merge lose nothing; readers see rows before they are merged.

Runs of the CLI (a killed run, status, a state of a newer format) are in
test_soplog_runs.py; the commits and the reference model in soplog_support.py.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from soplog_support import GROUP, commits, entry, reference, tables

from pacsmigrate import rows, soplog
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.errors import NoRoomToCompactError
from pacsmigrate.records import StoredObject


def test_both_merges_give_what_the_rule_gives(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Small batches and runs: several merge transactions, sorted runs spilled to files.
    monkeypatch.setattr(soplog, "MERGE_ROWS", 5)
    monkeypatch.setattr(soplog, "RUN_ROWS", 7)
    monkeypatch.setattr(soplog, "COPY_BATCH", 3)
    monkeypatch.setattr(soplog, "clustered", lambda uids: False)  # every row to the log
    first, then = commits(1, 30), commits(2, 40, start=30)
    want = reference(first, then)
    assert len(want[1]) >= 10 and len(want[0]) >= 30  # the case is not trivial
    results = []
    for how in ("merge", "compact"):
        cp = Checkpoint(tmp_path / how)
        try:
            cp.commit_objects(first)
            assert cp.merge_sop_log() == sum(len(o.entries) for o in first)
            cp.commit_objects(then)  # the table holds rows now; more wait in the log
            assert cp.sop_log_rows() == sum(len(o.entries) for o in then)
            texts = {rows.packed_uid(e.about.sop_uid): e.about.sop_uid
                     for o in first + then for e in o.entries}
            # the files a UID has, read through the log as its merge will chain them
            unmerged = {t: cp.paths_for_sop(t) for t in texts.values()}
            assert sum(len(p) > 1 for p in unmerged.values()) >= 5
            if how == "merge":
                cp.merge_sop_log()
            else:
                with cp.env.begin() as txn:
                    runs = [[uid for chunk in run for uid, _ in chunk] for run in
                            soplog.sorted_runs(txn, cp.db["soplog"], tmp_path / "runs")]
                assert len(runs) > 5 and all(run == sorted(run) for run in runs)  # files
                cp.compact()
                assert not (cp.state_dir / "checkpoint.soprun").exists()
            assert cp.sop_log_rows() == 0
            results.append(tables(cp))
            for uid, path in want[0].items():
                assert cp.path_for_sop(texts[uid]) == path
            assert {t: cp.paths_for_sop(t) for t in texts.values()} == unmerged
        finally:
            cp.close()
    assert results == [want, want]


def test_readers_see_rows_before_they_are_merged(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(soplog, "clustered", lambda uids: False)
    cp = Checkpoint(tmp_path / "state")
    try:
        cp.commit_objects([StoredObject("k/a.tar", "tar", GROUP, "a", 4096, "e", "", (
            entry(b"/pacs/a", 1, "1.2.3.9"),))])
        cp.merge_sop_log()
        cp.commit_objects([StoredObject("k/b.tar", "tar", GROUP, "b", 4096, "e", "", (
            entry(b"/pacs/b", 2, "1.2.3.9"), entry(b"/pacs/c", 3, "1.2.3.10")))])
        # the table says /pacs/a; the log's newer row wins; a UID only in the log is found
        assert cp.path_for_sop("1.2.3.9") == b"/pacs/b"
        assert cp.path_for_sop("1.2.3.10") == b"/pacs/c"
        # the conflict the merge will record is seen before it
        assert cp.paths_for_sop("1.2.3.9") == [b"/pacs/b", b"/pacs/a"]
        cp.merge_sop_log()
        assert cp.paths_for_sop("1.2.3.9") == [b"/pacs/b", b"/pacs/a"]
    finally:
        cp.close()


_KILLED = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from soplog_support import commits
    from pacsmigrate import soplog
    from pacsmigrate.checkpoint import Checkpoint
    soplog.MERGE_ROWS = soplog.COPY_BATCH = soplog.RUN_ROWS = 4
    soplog.clustered = lambda uids: False
    cp = Checkpoint(Path({state!r}))
    cp.commit_objects(commits(3, 30))
    cp.{call}()
    print("not killed")
""")


@pytest.mark.parametrize("point,call", [("mid-sop-merge:3", "merge_sop_log"),
                                        ("mid-compact:3", "compact")])
def test_a_merge_killed_midway_loses_nothing(point: str, call: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = _KILLED.format(tests=str(Path(__file__).parent), state=str(state), call=call)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PACSMIGRATE_CRASH_AT": point}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    objects = commits(3, 30)
    logged = sum(len(o.entries) for o in objects)
    leftover = state / ("checkpoint.compact" if call == "compact" else soplog.SPILL)
    if call == "compact":  # the partial copy (as large as the state) is left behind
        assert leftover.exists()
    readonly = Checkpoint(state, readonly=True)
    readonly.close()
    assert leftover.exists() == (call == "compact")  # readers leave it alone
    cp = Checkpoint(state)  # the next writer removes it, whatever it does next
    assert not leftover.exists()
    try:
        left = cp.sop_log_rows()
        if call == "merge_sop_log":  # three batches of four went into the table
            assert left == logged - 12 and cp.counts()["sop"] > 0
        else:  # the copy was given up: the state as it was
            assert left == logged and cp.counts()["sop"] == 0
        cp.merge_sop_log()
        assert cp.sop_log_rows() == 0 and tables(cp) == reference(objects)
    finally:
        cp.close()


def test_clustered_commits_go_straight_in_until_one_is_spread(tmp_path: Path) -> None:
    """UIDs numbered in order go straight into the table; a commit of spread UIDs goes to the
    log, and so does every commit after it until the log is merged (its rows are older)."""
    def obj(n: int, uids: list[str]) -> StoredObject:
        return StoredObject(f"k/{n}.tar", "tar", GROUP, f"b{n}", 4096, "e", "", tuple(
            entry(b"/pacs/%d/%d" % (n, i), i, u) for i, u in enumerate(uids)))
    rnd = random.Random(4)
    series = [f"1.2.826.0.1.3680043.8.498.{n}.1.{i}" for n in (1, 2, 3) for i in range(100)]
    spread = [f"2.25.{rnd.getrandbits(120)}" for _ in range(100)]
    packed = [rows.packed_uid(u) for u in series + spread]
    assert soplog.clustered(packed[:100]) and soplog.clustered(packed[:300])
    assert not soplog.clustered(packed[300:]) and soplog.clustered(packed[300:363])
    cp = Checkpoint(tmp_path / "state")
    try:
        cp.commit_objects([obj(1, series[:100])])
        assert (cp.counts()["sop"], cp.sop_log_rows()) == (100, 0)
        cp.commit_objects([obj(2, spread)])
        assert (cp.counts()["sop"], cp.sop_log_rows()) == (100, 100)
        cp.commit_objects([obj(3, series[100:200])])  # clustered, but the log has rows
        assert (cp.counts()["sop"], cp.sop_log_rows()) == (100, 200)
        cp.merge_sop_log()
        cp.commit_objects([obj(4, series[200:])])
        assert (cp.counts()["sop"], cp.sop_log_rows()) == (400, 0)
        for n, uids in ((1, series[:100]), (2, spread), (3, series[100:200]),
                        (4, series[200:])):
            assert all(cp.path_for_sop(u) == b"/pacs/%d/%d" % (n, i)
                       for i, u in enumerate(uids))
    finally:
        cp.close()


def test_merged_pieces_is_a_stable_merge_with_each_uid_in_one_piece() -> None:
    """Sorted sources cut into chunks of any size, UIDs repeated within and across them and
    across chunk ends: the pieces, joined, are the stable sort of all rows in source order."""
    for seed in range(300):
        rnd = random.Random(seed)
        sources, rows_in_order = [], []
        for s in range(rnd.randrange(1, 5)):
            rows_ = sorted(((bytes([rnd.randrange(6)]), b"%d/%d" % (s, i))
                            for i in range(rnd.randrange(0, 30))), key=lambda r: r[0])
            rows_in_order += rows_
            chunks, i = [], 0
            while i < len(rows_):
                n = rnd.randrange(1, 5)
                chunks.append(rows_[i:i + n])
                i += n
            sources.append(iter(chunks))
        pieces = list(soplog.merged_pieces(sources))
        assert [r for p in pieces for r in p] == sorted(rows_in_order, key=lambda r: r[0])
        seen = [{uid for uid, _ in p} for p in pieces]
        assert sum(len(u) for u in seen) == len(set().union(*seen)), seed


def test_a_full_disk_during_the_merge_leaves_the_state_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while the compaction spills the log's sorted runs: no compaction (as
    when the copy finds no room), the log whole, nothing left behind; it merges later."""
    monkeypatch.setattr(soplog, "clustered", lambda uids: False)
    monkeypatch.setattr(soplog, "RUN_ROWS", 10)
    objects = commits(5, 30)
    cp = Checkpoint(tmp_path / "state")
    try:
        cp.commit_objects(objects)
        logged = cp.sop_log_rows()
        spill = cp.state_dir / soplog.SPILL

        def no_room(_: object) -> bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(soplog, "marshal", SimpleNamespace(dumps=no_room))
        # full while the spill takes its room (removing it frees the room again)
        monkeypatch.setattr(Checkpoint, "_disk_full", lambda self: spill.exists())
        with pytest.raises(NoRoomToCompactError, match=r"^no room to compact the checkpoint: "
                           r"the disk filled up during the copy$"):
            cp.compact()
        assert cp.sop_log_rows() == logged and cp.counts()["sop"] == 0
        assert not spill.exists() and not (cp.state_dir / "checkpoint.compact").exists()
        cp.merge_sop_log()
        assert tables(cp) == reference(objects)
    finally:
        cp.close()


@pytest.mark.parametrize("logged", [False, True])
def test_a_copy_of_an_edited_instance_does_not_hide_the_original(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: bool) -> None:
    """a, then b (an edit of a: other bytes), then c (a copy of b): `get --sop` must still
    name a beside c; and X, Y, X names two files, not three. Straight into the table, and
    through the log (read before the merge, then merged)."""
    if logged:
        monkeypatch.setattr(soplog, "clustered", lambda uids: False)
    cp = Checkpoint(tmp_path / "state")
    try:
        for path, digest, sop in ((b"/pacs/a", 1, "1.2.3.9"), (b"/pacs/b", 2, "1.2.3.9"),
                                  (b"/pacs/c", 2, "1.2.3.9"), (b"/pacs/x", 5, "1.2.3.7"),
                                  (b"/pacs/y", 6, "1.2.3.7"), (b"/pacs/x", 5, "1.2.3.7")):
            cp.commit_objects([StoredObject(f"k{path.decode()}.tar", "tar", GROUP, "b", 4096,
                                            "e", "", (entry(path, digest, sop),))])
        for merge in (False, True):
            if merge:
                assert cp.merge_sop_log() == (6 if logged else 0)
            assert cp.paths_for_sop("1.2.3.9") == [b"/pacs/c", b"/pacs/a"], merge
            assert cp.paths_for_sop("1.2.3.7") == [b"/pacs/x", b"/pacs/y"], merge
        assert tables(cp)[1] == {b"/pacs/b": b"/pacs/a", b"/pacs/c": b"/pacs/a",
                                 b"/pacs/y": b"/pacs/x", b"/pacs/x": b"/pacs/y"}
    finally:
        cp.close()
