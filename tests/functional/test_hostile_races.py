"""Hostile source trees, races made deterministic: a proxy around the `os` module of one
pipeline stage (or a held walk) changes the tree at the chosen moment, through the real code
path. Files vanish or are replaced during the scan, before the read, between the read and
packing; files keep changing while read; unreadable files; a failed file deleted before the
next run. Every file ends up migrated or reported with its reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pydicom
import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import MiB, OsProxy, assert_complete, config, fd_path, index_rows, source_files
from hostile_support import _abs, _by_path, _pydicom_data, _report

from pacsmigrate import Migration, bundle, faults, pipeline, reads
from pacsmigrate import read as read_module
from pacsmigrate import walk as walk_module
from pacsmigrate.paths import from_fields
from pacsmigrate.records import BundlePlan
from pacsmigrate.sink import Sink
from pacsmigrate.stream import SourceStream
from pacsmigrate.synth import make_tree

# The tests that hook the read stage's functions in this process read in it too (a read
# process, --read-process, runs the same code in a child these hooks do not reach).
HOOKED = "off"


# ---------------------------------------------------------------------------------------
# Races made deterministic: the tree changes at a chosen moment of the real pipeline.


def _before_read(act: Callable[[list[bytes]], None]) -> Callable[..., Any]:
    """A read stage that first calls act(paths) with the paths it is about to read."""
    real = reads.read_files

    def read_files(directory: bytes, names: list[bytes], *args: Any, **kw: Any) -> Any:
        act([directory + b"/" + n for n in names])
        return real(directory, names, *args, **kw)
    return read_files


def change_after_the_walk(cfg: Any, change: Callable[[], None]) -> Migration:
    """A migration that holds every plan until the walk is over, runs `change`, then stores
    them: the tree changes after each file was read, before any was packed."""

    class ChangeAfterTheWalk(SourceStream):
        held: list[BundlePlan] | None = None

        async def walk(self) -> None:
            self.held = []
            await super().walk()
            held, self.held = self.held, None
            change()
            for plan in held:
                await super().put(plan)

        async def put(self, plan: BundlePlan) -> None:
            if self.held is not None:
                self.held.append(plan)
            else:
                await super().put(plan)
    return Migration(cfg, stream=ChangeAfterTheWalk)

    async def _put(self, sink: Sink, plan: BundlePlan) -> None:
        if self.held is not None:
            self.held.append(plan)
        else:
            await super()._put(sink, plan)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "nas"
    make_tree(root / "studies", studies=3, seed=21, layout="patient", scale=0.02)
    work = root / "work"
    for d in ("a", "b", "gone-before-listing", "gone-after-listing", "gone-before-pack"):
        (work / d).mkdir(parents=True)
        for i in range(3):
            shutil.copy(TEST_FILES / ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm")[i],
                        work / d / f"f{i}.dcm")
    return root


def test_files_vanishing_or_replaced_during_the_scan_and_before_the_read(
        moto_s3: S3Target, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tree / "work"
    a, b = work / "a", work / "b"
    gone_dir = work / "gone-before-listing"
    listed_then_gone = work / "gone-after-listing"

    # 1. While the walker lists: a directory disappears before it is listed, and a file
    #    disappears right after the listing named it.
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if os.fsencode(path) == _abs(gone_dir):
            shutil.rmtree(gone_dir)
        it = real_scandir(path)
        if os.fsencode(path) != _abs(b):
            return it

        class Vanishing:
            def __enter__(self) -> Self:
                return self

            def __exit__(self, *exc: object) -> None:
                it.close()

            def __iter__(self) -> Iterator[os.DirEntry[bytes]]:
                for entry in it:
                    yield entry
                    if entry.name == b"f0.dcm":
                        os.unlink(entry.path)  # listed, gone before anyone opens it
        return Vanishing()


    # 2. After the walker handed a listing over, before the reader opens the files.
    actions: dict[bytes, Callable[[], None]] = {
        _abs(a / "f0.dcm"): lambda: os.unlink(a / "f0.dcm"),
        _abs(listed_then_gone / "f0.dcm"): lambda: shutil.rmtree(listed_then_gone),
    }

    def act(paths: list[bytes]) -> None:
        for p in paths:
            action = actions.pop(p, None)
            if action is not None:
                action()

    report = tmp_path / "report.json"
    with monkeypatch.context() as hook:
        hook.setattr(walk_module, "os", OsProxy(scandir=scandir))
        hook.setattr(reads, "read_files", _before_read(act))
        stats = run(pipeline.migrate(config([tree], moto_s3.url, tmp_path / "state",
                                            moto_s3.info.endpoint_url, report_path=report,
                                            read_process=HOOKED)))
    assert actions == {}, "the hooks did not run"
    assert stats.not_migrated == 0
    assert_complete(moto_s3, tmp_path / "state", tree)
    skipped = {p: s["reason"] for p, s in _by_path(_report(report)["skipped"]).items()}
    assert skipped[_abs(gone_dir)] == "directory vanished during scan"
    assert skipped[_abs(b / "f0.dcm")] == "vanished before read"
    assert skipped[_abs(a / "f0.dcm")] == "vanished before read"
    for i in range(3):
        assert skipped[_abs(listed_then_gone / f"f{i}.dcm")] == "vanished before read"
    assert _report(report)["not_migrated"] == []


def test_files_changed_deleted_or_moved_between_read_and_packing(
        moto_s3: S3Target, tree: Path, tmp_path: Path) -> None:
    work = tree / "work"
    a = work / "a"
    victim_other_study = a / "f0.dcm"
    other = pydicom.dcmread(TEST_FILES / "MR_small.dcm")

    def change() -> None:
        os.unlink(a / "f1.dcm")                               # deleted
        other.save_as(victim_other_study)                     # now another study
        (a / "f2.dcm").write_bytes(b"")                       # emptied
        shutil.rmtree(work / "gone-before-pack")              # whole directory gone

    report = tmp_path / "report.json"
    state = tmp_path / "state"
    # hold_max=0: no file's bytes are carried from the read; packing reads them again.
    cfg = config([tree], moto_s3.url, state, moto_s3.info.endpoint_url, report_path=report,
                 hold_max=0)
    stats = run(change_after_the_walk(cfg, change).run())
    assert stats.not_migrated == 0
    assert stats.moved_study == 2 and stats.reread_changed == 2  # other study; empty
    rows = {from_fields(r["source_path"], r["source_path_b64"]): r for r in index_rows(state)}
    assert rows[_abs(victim_other_study)]["study_uid"] == str(other.StudyInstanceUID)
    assert rows[_abs(a / "f2.dcm")]["reason"] == "empty file"
    assert_complete(moto_s3, state, tree)
    skipped = {p: s["reason"] for p, s in _by_path(_report(report)["skipped"]).items()}
    assert skipped[_abs(a / "f1.dcm")] == "vanished before packing"
    for i in range(3):
        assert skipped[_abs(work / "gone-before-pack" / f"f{i}.dcm")] == "vanished before packing"


def _replace(path: Path, kind: str) -> None:
    os.unlink(path)
    if kind == "symlink":
        os.symlink(TEST_FILES / "CT_small.dcm", path)
    elif kind == "directory":
        os.mkdir(path)
        shutil.copy(TEST_FILES / "CT_small.dcm", path / "inside.dcm")
    else:
        os.mkfifo(path)


REPLACED = {"symlink": "symlink not followed", "directory": "not a regular file any more",
            "fifo": "not a regular file any more"}


@pytest.mark.parametrize("kind", sorted(REPLACED))
@pytest.mark.parametrize("stage", ["before-read", "before-packing"])
def test_file_replaced_by_a_non_file_is_skipped_not_failed(
        stage: str, kind: str, moto_s3: S3Target, tree: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A path that stops being a regular file after the walk listed it (between the listing
    and the read, or between the read and packing) is what the walk would have skipped:
    reported as skipped with the walk's reason, and the run succeeds. Whatever the
    directory now holds is migrated by the next run."""
    victim = tree / "work" / "a" / "f0.dcm"

    def act(paths: list[bytes]) -> None:
        if _abs(victim) in paths:
            _replace(victim, kind)

    report = tmp_path / "report.json"
    cfg = config([tree], moto_s3.url, tmp_path / "state", moto_s3.info.endpoint_url,
                 report_path=report, hold_max=0, read_process=HOOKED)
    with monkeypatch.context() as hook:
        if stage == "before-read":
            hook.setattr(reads, "read_files", _before_read(act))
            stats = run(Migration(cfg).run())
        else:
            stats = run(change_after_the_walk(cfg, lambda: _replace(victim, kind)).run())
    doc = _report(report)
    listed = _by_path(doc["skipped"] + doc["not_migrated"])
    assert _abs(victim) in listed, "the replaced path is not in the report"
    assert (listed[_abs(victim)]["reason"], listed[_abs(victim)]["final"]) == (
        REPLACED[kind], True), listed[_abs(victim)]
    assert stats.not_migrated == 0
    assert run(pipeline.migrate(cfg)).not_migrated == 0
    assert_complete(moto_s3, tmp_path / "state", tree)


def test_files_that_keep_changing_while_read_are_left_for_the_next_run(
        moto_s3: S3Target, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer appends to two files every time they are looked at: a small one while it is
    read, a 12 MiB one (its own multipart object) while it is uploaded. Neither may be
    stored half-old; both are reported; no multipart upload is left behind; the next run
    stores them."""
    small = tree / "work" / "a" / "f0.dcm"
    large = tree / "work" / "large.dcm"
    data = _pydicom_data()
    base = (data / "RG1_UNCI.dcm").read_bytes() if data else (TEST_FILES / "CT_small.dcm"
                                                              ).read_bytes()
    large.write_bytes(base + b"\0" * (12 * MiB - len(base)))
    appended = {_abs(small): 0, _abs(large): 0}

    def writer_on(racing: bytes) -> Callable[[int], os.stat_result]:
        """The stat that ends a read sees the file grown: the NAS wrote while we read."""
        def fstat(fd: int) -> os.stat_result:
            path = fd_path(fd)
            if path == racing:
                with open(path, "ab") as f:
                    f.write(b"\0" * 1024)
                appended[path] += 1
            return os.fstat(fd)
        return fstat

    state, report = tmp_path / "state", tmp_path / "report.json"
    cfg = config([tree], moto_s3.url, state, moto_s3.info.endpoint_url, report_path=report,
                 bundle_size=8 * MiB, large_file=4 * MiB, read_process=HOOKED)
    with monkeypatch.context() as writer:
        writer.setattr(read_module, "os", OsProxy(fstat=writer_on(_abs(small))))
        writer.setattr(bundle, "os", OsProxy(fstat=writer_on(_abs(large))))
        stats = run(pipeline.migrate(cfg))
    assert all(appended.values()), appended
    assert stats.not_migrated == 2
    indexed = {from_fields(r["source_path"], r["source_path_b64"]) for r in index_rows(state)}
    assert not set(appended) & indexed, "a file that changed during every read was stored"
    doc = _report(report)
    not_migrated = {p: v["reason"] for p, v in _by_path(doc["not_migrated"]).items()}
    assert not_migrated[_abs(small)] == "kept changing while being read"
    # Its upload was aborted on every pass: said as for the small file, not "pending".
    assert not_migrated[_abs(large)] == "kept changing while being read"
    assert moto_s3.pending_uploads() == []  # the aborted multipart uploads are gone
    assert stats.files_migrated == len(source_files(tree)) - 2

    again = run(pipeline.migrate(cfg))
    assert again.not_migrated == 0
    assert_complete(moto_s3, state, tree)


def test_unreadable_file_is_reported_and_retried(moto_s3: S3Target, tree: Path,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Its open fails with EACCES (the fault hook: CI runs as root, which reads mode 000)."""
    victim = tree / "work" / "a" / "f0.dcm"
    monkeypatch.setattr(faults, "DENY_OPEN", b"a/f0.dcm")
    report = tmp_path / "report.json"
    cfg = config([tree], moto_s3.url, tmp_path / "state", moto_s3.info.endpoint_url,
                 report_path=report)
    stats = run(pipeline.migrate(cfg))
    assert stats.not_migrated == 1
    listed = _by_path(_report(report)["not_migrated"])
    assert listed[_abs(victim)]["reason"] == "unreadable"
    monkeypatch.setattr(faults, "DENY_OPEN", b"")
    assert run(pipeline.migrate(cfg)).not_migrated == 0
    assert_complete(moto_s3, tmp_path / "state", tree)


def test_unreadable_file_exits_1_from_the_cli(moto_s3: S3Target, tree: Path,
                                              tmp_path: Path) -> None:
    """Exit status 1: files still to migrate (named in the report); 0 once they are."""
    args = ["migrate", str(tree), moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
            "--state", str(tmp_path / "state"), "--report", str(tmp_path / "r.json")]
    proc = run_cli(*args, env={**moto_s3.env(), "PACSMIGRATE_DENY_OPEN": "a/f0.dcm"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT DONE: 1 files still to migrate; re-run the same command" in proc.stdout
    assert "failed: 1 unreadable" in proc.stdout
    listed = _by_path(_report(tmp_path / "r.json")["not_migrated"])
    assert listed[_abs(tree / "work" / "a" / "f0.dcm")]["reason"] == "unreadable"
    again = run_cli(*args, env=moto_s3.env())
    assert again.returncode == 0, again.stdout + again.stderr
    assert_complete(moto_s3, tmp_path / "state", tree)


def test_a_failed_file_deleted_before_the_next_run_is_not_pending_forever(
        moto_s3: S3Target, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that kept changing in one run (not migrated, exit 1) and is gone by the next
    (a temporary file the PACS removed): nothing is left to migrate, so the next run is done,
    and the report says the file vanished instead of listing it as still to do."""
    victim = tree / "work" / "a" / "f0.dcm"

    def fstat(fd: int) -> os.stat_result:  # the file grows while it is read, every time
        if fd_path(fd) == _abs(victim):
            with open(victim, "ab") as f:
                f.write(b"\0" * 1024)
        return os.fstat(fd)

    report = tmp_path / "report.json"
    cfg = config([tree], moto_s3.url, tmp_path / "state", moto_s3.info.endpoint_url,
                 report_path=report, read_process=HOOKED)
    with monkeypatch.context() as writer:
        writer.setattr(read_module, "os", OsProxy(fstat=fstat))
        assert run(pipeline.migrate(cfg)).not_migrated == 1
    victim.unlink()
    again = run(pipeline.migrate(cfg))
    doc = _report(report)
    assert _abs(victim) not in _by_path(doc["not_migrated"]), "a deleted file is still 'to do'"
    assert again.not_migrated == 0
    assert_complete(moto_s3, tmp_path / "state", tree)
