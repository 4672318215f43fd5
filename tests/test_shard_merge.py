"""`index merge`: what it refuses to join (slices of another migration, a state given twice
or in use, a slice with uploads in doubt) and what it names (a slice missing); overlapping
states merged to one index; a slice's pending files and problems kept visible; SOP
conflicts that do not depend on the order of the states."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pydicom
from conftest import TEST_FILES, LocalTarget, S3Target, run_cli
from helpers import assert_complete, index_rows
from test_shard import _migrate, _same, _tree

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.records import Described, Member
from pacsmigrate.synth import make_tree


def test_merge_refuses_what_it_cannot_join(moto_s3: S3Target, local_store: LocalTarget,
                                           tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root, studies=2, seed=75, layout="patient", scale=0.05)
    _migrate(local_store, root, tmp_path / "here", "--shard", "0/2")
    _migrate(moto_s3, root, tmp_path / "there", "--shard", "1/2")
    merged = tmp_path / "merged"
    proc = run_cli("index", "merge", str(tmp_path / "here"), str(tmp_path / "there"),
                   "--state", str(merged))
    assert proc.returncode == 2 and "merge only the slices of one migration" in proc.stderr
    proc = run_cli("index", "merge", str(tmp_path / "here"), str(tmp_path / "here"),
                   "--state", str(tmp_path / "m2"))
    assert proc.returncode == 2 and "given twice" in proc.stderr
    run_cli("index", "merge", str(tmp_path / "here"), "--state", str(tmp_path / "m3"),
            check=True)
    proc = run_cli("index", "merge", str(tmp_path / "here"), "--state", str(tmp_path / "m3"))
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    # A slice missing from the merge is named; the inputs are read, never written.
    data = tmp_path / "here" / "checkpoint.lmdb" / "data.mdb"
    before = data.read_bytes()
    proc = run_cli("index", "merge", str(tmp_path / "here"), "--state", str(tmp_path / "m4"))
    assert proc.returncode == 0 and "slices 1/2 are not merged" in proc.stderr
    assert data.read_bytes() == before
    # A state a run is using, and a directory that holds no state: one line each.
    running = Checkpoint(tmp_path / "here")  # what a run holds: the exclusive lock
    try:
        proc = run_cli("index", "merge", str(tmp_path / "here"), "--state", str(tmp_path / "m5"))
    finally:
        running.close()
    assert proc.returncode == 2 and "a pacsmigrate run is using" in proc.stderr
    (tmp_path / "not-a-state").mkdir()
    proc = run_cli("index", "merge", str(tmp_path / "not-a-state"), "--state",
                   str(tmp_path / "m6"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "not-a-state" / "checkpoint.lmdb").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("m5", "m6"))]


def test_merge_refuses_a_slice_with_uploads_in_doubt(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root, studies=2, seed=76, layout="patient", scale=0.05)
    state = tmp_path / "slice"
    args = ["migrate", str(root), moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
            "--state", str(state), "--no-progress", "--shard", "0/1"]
    killed = run_cli(*args, env={**moto_s3.env(), "PACSMIGRATE_CRASH_AT": "after-intent:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    proc = run_cli("index", "merge", str(state), "--state", str(tmp_path / "merged"))
    assert proc.returncode == 2 and "uploads in doubt" in proc.stderr
    # Nothing that looks like a merged state is left behind by the refused merge.
    assert not (tmp_path / "merged").exists()
    run_cli(*args, env=moto_s3.env(), check=True)  # settled by its own re-run
    run_cli("index", "merge", str(state), "--state", str(tmp_path / "merged2"), check=True)
    assert_complete(moto_s3, tmp_path / "merged2", root)


def test_overlapping_states_merge_to_one_index(local_store: LocalTarget, tmp_path: Path) -> None:
    """Two slices and a whole run over the same tree: the files both hold are one row (the
    newer version), the objects both stored (packed alike, same key) one object."""
    root = _tree(tmp_path / "pacs")
    states = [tmp_path / "half0", tmp_path / "half1", tmp_path / "whole"]
    _migrate(local_store, root, states[0], "--shard", "0/2")
    _migrate(local_store, root, states[1], "--shard", "1/2")
    _migrate(local_store, root, states[2])
    merged = tmp_path / "merged"
    proc = run_cli("index", "merge", *map(str, states), "--state", str(merged), check=True)
    whole = index_rows(states[2])
    assert f"{len(whole):,} older versions replaced" in proc.stdout  # each file twice
    # The store keeps both runs' bundles (a study the slices split is one bundle of the
    # whole run): every row must still read back as its file.
    assert _same(index_rows(merged)) == _same(whole)
    verify = run_cli("verify", "--state", str(merged), "--deep")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_pending_files_and_problems_of_a_slice_stay_visible(local_store: LocalTarget,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root, studies=2, seed=77, layout="patient", scale=0.05)
    state = tmp_path / "slice"
    _migrate(local_store, root, state, "--shard", "0/1")
    cp = Checkpoint(state)
    try:  # a file read but not stored yet (a study packed after the walk)
        cp.spill([Member(b"/nas/later.dcm", 10, 1, Described("g" * 32))])
    finally:
        cp.close()
    merged = tmp_path / "merged"
    proc = run_cli("index", "merge", str(state), "--state", str(merged), check=True)
    assert "1 still pending" in proc.stdout
    status = json.loads(run_cli("status", "--state", str(merged), "--json", check=True).stdout)
    assert status["files_pending"] == 1


def test_merged_sop_conflicts_do_not_depend_on_the_order_of_the_states(
        tmp_path: Path) -> None:
    """State X holds an instance; state Y two edits of it (the second displaced the first
    there). Merged either way, `get --sop` names all three files and two conflicts exist:
    X's file joins the end of Y's chain, not its head (whose link would be overwritten)."""
    original = TEST_FILES / "CT_small.dcm"
    store = tmp_path / "store"
    store.mkdir()
    for name, files in (("X", {"d1/a.dcm": None}), ("Y", {"d2/b.dcm": "EDIT1"})):
        for rel, text in files.items():
            target = tmp_path / f"src{name}" / rel
            target.parent.mkdir(parents=True)
            if text is None:
                shutil.copy(original, target)
            else:
                ds = pydicom.dcmread(original)
                ds.SeriesDescription = text
                ds.save_as(target)
        run_cli("migrate", str(tmp_path / f"src{name}"), str(store), "--state",
                str(tmp_path / name), "--no-progress", check=True)
    later = tmp_path / "srcY" / "d3" / "c.dcm"  # a second edit, in a later run of Y
    later.parent.mkdir()
    ds = pydicom.dcmread(original)
    ds.SeriesDescription = "EDIT2"
    ds.save_as(later)
    run_cli("migrate", str(tmp_path / "srcY"), str(store), "--state", str(tmp_path / "Y"),
            "--no-progress", check=True)
    sop = pydicom.dcmread(original).SOPInstanceUID
    for order in (("X", "Y"), ("Y", "X")):
        merged = tmp_path / ("m" + "".join(order))
        run_cli("index", "merge", *(str(tmp_path / n) for n in order), "--state", str(merged),
                check=True)
        cp = Checkpoint(merged, readonly=True)
        try:
            listed = cp.paths_for_sop(sop)
            assert cp.counts()["conflicts"] == 2, order
        finally:
            cp.close()
        assert sorted(listed) == sorted(os.fsencode(p) for p in (
            tmp_path / "srcX" / "d1" / "a.dcm", tmp_path / "srcY" / "d2" / "b.dcm", later)), order
