"""The SOP table through its log, seen by runs of the CLI: a run killed after a commit
leaves rows in the log that `get --sop` finds and the next run merges; `status` says how
many rows wait; a state of a newer format is refused in one line, unchanged."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pydicom
import pytest
from conftest import S3Target, run_cli
from helpers import assert_complete
from pydicom.data import get_testdata_file
from soplog_support import commits

from pacsmigrate import soplog
from pacsmigrate.checkpoint import FORMAT, Checkpoint
from pacsmigrate.errors import StateError
from pacsmigrate.paths import from_fields


def _random_uid_tree(root: Path, studies: int, images: int) -> None:
    """Studies of CT images whose SOP UIDs are random 2.25 ones, as some systems make them."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    rnd = random.Random(7)
    for s in range(studies):
        ds.StudyInstanceUID = f"2.25.{rnd.getrandbits(120)}"
        ds.SeriesInstanceUID = f"2.25.{rnd.getrandbits(120)}"
        (root / f"s{s}").mkdir(parents=True)
        for i in range(images):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = \
                f"2.25.{rnd.getrandbits(120)}"
            ds.save_as(root / f"s{s}" / f"{i}.dcm")


def test_a_killed_run_leaves_rows_the_next_run_merges(moto_s3: S3Target,
                                                      tmp_path: Path) -> None:
    """Random SOP UIDs in packs of many studies: a commit's rows go to the log; a run killed
    after it leaves them there, `get --sop` finds them, the next run merges them."""
    tree = tmp_path / "pacs"
    _random_uid_tree(tree, studies=30, images=10)
    state = tmp_path / "state"
    args = ["migrate", str(tree), moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
            "--state", str(state), "--no-progress", "--pack", "8MiB"]
    killed = run_cli(*args, env={**moto_s3.env(), "PACSMIGRATE_CRASH_AT": "after-commit:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cp = Checkpoint(state, readonly=True)
    try:
        assert cp.sop_log_rows() >= soplog.JUDGED and cp.counts()["sop"] == 0
        some = next(r for _, r in cp.iter_db("index") if r["sop_uid"])
    finally:
        cp.close()
    got = run_cli("get", "--sop", some["sop_uid"], "-o", str(tmp_path / "one.dcm"),
                  "--state", str(state), env=moto_s3.env())
    assert got.returncode == 0, got.stderr
    source = from_fields(some["source_path"], some["source_path_b64"])
    assert (tmp_path / "one.dcm").read_bytes() == Path(os.fsdecode(source)).read_bytes()
    done = run_cli(*args, env=moto_s3.env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert_complete(moto_s3, state, tree)
    cp = Checkpoint(state, readonly=True)
    try:
        assert cp.sop_log_rows() == 0
        indexed = [r for _, r in cp.iter_db("index") if r["sop_uid"]]
        assert len(indexed) == cp.counts()["sop"] == 300
        for r in indexed:
            assert cp.path_for_sop(r["sop_uid"]) == from_fields(r["source_path"],
                                                                 r["source_path_b64"])
    finally:
        cp.close()


def test_status_says_how_many_rows_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    monkeypatch.setattr(soplog, "clustered", lambda uids: False)
    state = tmp_path / "state"
    objects = commits(6, 3)
    waiting = sum(len(o.entries) for o in objects)
    cp = Checkpoint(state)
    try:
        cp.commit_objects(objects)
    finally:
        cp.close()
    for merged in (False, True):
        if merged:
            cp = Checkpoint(state)
            cp.merge_sop_log()
            cp.close()
        doc = json.loads(run_cli("status", "--state", str(state), "--json", check=True).stdout)
        text = run_cli("status", "--state", str(state), check=True).stdout
        assert doc["sop_rows_unmerged"] == (0 if merged else waiting)
        said = f"{waiting:,} rows of the SOPInstanceUID index wait to be merged"
        assert (said in text) is not merged, text


def test_a_state_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    """A later pacsmigrate may keep rows where this one would not look: one line, no change."""
    state = tmp_path / "state"
    cp = Checkpoint(state)
    cp.put_meta("format", FORMAT + 1)
    cp.close()
    data = next(state.rglob("data.mdb"))
    source, store = tmp_path / "pacs", tmp_path / "store"
    source.mkdir()
    store.mkdir()
    before = data.read_bytes()
    for args, said_first in ((("status", "--state", str(state)), "error: "),
                             (("migrate", str(source), str(store), "--state", str(state)),
                              "error: pre-flight: state: ")):
        proc = run_cli(*args)
        assert proc.returncode != 0
        said = (f"state directory {state} was written by a newer pacsmigrate (state format "
                f"{FORMAT + 1}; this version reads {FORMAT} and older): use that version or "
                "a newer one")
        assert proc.stderr.strip().splitlines() == [said_first + said], proc.stderr
    checked = run_cli("check", str(source), str(store), "--state", str(state))
    assert checked.returncode != 0
    assert f"FAIL  state: {said}" in checked.stdout.splitlines()
    with pytest.raises(StateError, match="newer pacsmigrate"):
        Checkpoint(state, readonly=True)
    with pytest.raises(StateError, match="newer pacsmigrate"):  # not locked by the refusal
        Checkpoint(state)
    assert data.read_bytes() == before
