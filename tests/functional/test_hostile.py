"""Hostile source trees: every file ends up migrated or reported with its reason, the run never
crashes, and the source is only ever read (bytes, sizes, times and listings stay identical).

Races are made deterministic where the outcome is asserted exactly (a proxy around the `os`
module of one pipeline stage changes the tree at the chosen moment, through the real code
path); one test runs real background writers against the real CLI and checks invariants.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import blake3
import pydicom
import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import MiB, OsProxy, assert_complete, config, fd_path, index_rows, source_files

from pacsmigrate import Migration, bundle, faults, pipeline, reads
from pacsmigrate import read as read_module
from pacsmigrate import walk as walk_module
from pacsmigrate.keys import RUN_DIR
from pacsmigrate.manifest import TAIL, parse, read_trailer
from pacsmigrate.paths import from_fields
from pacsmigrate.records import BundlePlan
from pacsmigrate.sink import Sink
from pacsmigrate.stream import SourceStream
from pacsmigrate.synth import make_tree

# ---------------------------------------------------------------------------------------
# Fingerprints: what "the source was never modified" means, checked byte for byte.


def _hash_at(name: bytes, dirfd: int) -> str:
    # O_NOATIME: taking the fingerprint must not itself move the atimes it records.
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0), dir_fd=dirfd)
    try:
        h = hashlib.blake2b()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def fingerprint(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Every entry under root: kind, mode, size, mtime/ctime (files: atime and content hash
    too; links: their target; directories: their listing). Walks by directory fd, so it
    also reaches paths longer than PATH_MAX."""
    out: dict[bytes, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames, dirfd in os.fwalk(os.fsencode(root), follow_symlinks=False):
        st = os.fstat(dirfd)
        # A directory's atime moves whenever anyone lists it; its mtime/ctime do not.
        out[dirpath] = ("dir", st.st_mode, st.st_mtime_ns, st.st_ctime_ns,
                        tuple(sorted(dirnames + filenames)))
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            path = os.path.join(dirpath, name)
            if stat.S_ISDIR(st.st_mode):
                continue  # its own entry, from its own dirfd
            if stat.S_ISLNK(st.st_mode):
                out[path] = ("link", st.st_mode, os.readlink(name, dir_fd=dirfd),
                             st.st_mtime_ns, st.st_ctime_ns)
            elif stat.S_ISREG(st.st_mode):
                out[path] = ("file", st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                             st.st_atime_ns, st.st_nlink, _hash_at(name, dirfd))
            else:
                out[path] = ("special", st.st_mode, st.st_rdev, st.st_mtime_ns, st.st_ctime_ns)
    return out


def assert_untouched(before: dict[bytes, tuple[Any, ...]], root: Path, when: str) -> None:
    after = fingerprint(root)
    assert set(after) == set(before), f"{when}: entries appeared or vanished: " \
        f"{sorted(set(after) ^ set(before))[:5]}"
    changed = [p for p in before if before[p] != after[p]]
    assert not changed, f"{when}: source changed: " + "; ".join(
        f"{p!r}: {before[p]} -> {after[p]}" for p in changed[:3])


# ---------------------------------------------------------------------------------------
# Small helpers


def _report(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="ascii"))
    return doc


def _by_path(items: list[dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
    return {from_fields(i["source_path"], i["source_path_b64"]): i for i in items}


def _abs(p: Path) -> bytes:
    return os.fsencode(os.path.abspath(p))


def _pydicom_data() -> Path | None:
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        return None
    data = Path(spec.origin).parent / "data"
    return data if data.is_dir() else None


def _migrate_args(root: Path, target: S3Target, state: Path, *extra: str) -> list[str]:
    return ["migrate", str(root), target.url, "--endpoint-url", target.info.endpoint_url,
            "--state", str(state), "--bundle-size", "8MiB", "--large-file", "4MiB",
            "--part-size", "5MiB", "--concurrency", "3", "--no-progress", *extra]


def _fresh_target(like: S3Target, suffix: str) -> S3Target:
    target = S3Target(like.info, f"{like.bucket}-{suffix}", like.kind)
    target.client.create_bucket(Bucket=target.bucket)
    return target


# ---------------------------------------------------------------------------------------
# The static hostile tree

# The tests that hook the read stage's functions in this process read in it too (a read
# process, --read-process, runs the same code in a child these hooks do not reach).
HOOKED = "off"

TEXT_NAMES = ["with space.dcm", "-rf.dcm", "quote'\"`$(x).dcm", "back\\slash.dcm",
              "new\nline.dcm", "tab\there.dcm", "日本語の名前.dcm", "UPPER.DCM", ".hidden.dcm"]
BYTE_NAMES = [b"caf\xe9.dcm", b"\xff\xfe-utf16ish.dcm", b"r\xf6ntgen-\x80\x81.dcm",
              b"L" * 251 + b".dcm",                 # 255 bytes: the longest name ext4 allows
              b"\xc3" * 251 + b".dcm"]              # 255 bytes, none of them valid UTF-8
EXPECTED_DICOM = ["ok.dcm", "hardlink.dcm", "nopreamble_le.dcm", "nopreamble_be.dcm",
                  "bigendian.dcm", "deflated.dcm", "implicit.dcm"]


def _write_name(directory: Path, name: bytes, data: bytes) -> None:
    fd = os.open(os.path.join(os.fsencode(directory), name), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def build_hostile_tree(root: Path) -> dict[str, Any]:
    """Odd DICOM, non-DICOM, odd names, links, loops and special files. Returns what the
    test expects: reasons by name, the big files, and the skipped entries by path."""
    root.mkdir(parents=True)
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    dicom = root / "dicom"
    dicom.mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", dicom / "ok.dcm")
    os.link(dicom / "ok.dcm", dicom / "hardlink.dcm")
    for src, name in (("ExplVR_LitEndNoMeta.dcm", "nopreamble_le.dcm"),
                      ("ExplVR_BigEndNoMeta.dcm", "nopreamble_be.dcm"),
                      ("MR_small_bigendian.dcm", "bigendian.dcm"),
                      ("image_dfl.dcm", "deflated.dcm"),
                      ("MR_small_implicit.dcm", "implicit.dcm"),
                      ("MR_truncated.dcm", "truncated_pixels.dcm"),
                      ("rtplan_truncated.dcm", "truncated_dataset.dcm"),
                      ("README.txt", "readme.txt")):
        shutil.copy(TEST_FILES / src, dicom / name)
    (dicom / "half.dcm").write_bytes(ct[: len(ct) // 2])
    (dicom / "preamble_only.dcm").write_bytes(ct[:132])
    (dicom / "dicm_then_garbage.dcm").write_bytes(ct[:132] + os.urandom(3000))
    (dicom / "random.bin").write_bytes(os.urandom(70_000))
    (dicom / "empty.dcm").write_bytes(b"")
    (dicom / "gz.dcm.gz").write_bytes((TEST_FILES / "zipMR.gz").read_bytes())
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    del ds.StudyInstanceUID
    ds.save_as(dicom / "nostudy.dcm")
    # Multi-frame files big enough to be objects of their own (streamed, multipart).
    big: list[str] = []
    data = _pydicom_data()
    if data is not None:
        for name in ("RG1_UNCI.dcm", "color3d_jpeg_baseline.dcm", "MR2_UNCI.dcm"):
            if (data / name).exists():
                shutil.copy(data / name, dicom / name)
                big.append(name)
    names = root / "names"
    names.mkdir()
    for text in TEXT_NAMES:
        (names / text).write_bytes(ct)
    for raw in BYTE_NAMES:
        _write_name(names, raw, ct)
    odd_dir = names / os.fsdecode(b"dir-\xe9\xff")
    odd_dir.mkdir()
    (odd_dir / "inside.dcm").write_bytes(ct)
    (root / "empty-dir").mkdir()
    links = root / "links"
    links.mkdir()
    os.symlink("loop_b", links / "loop_a")
    os.symlink("loop_a", links / "loop_b")
    os.symlink("..", links / "parent")
    os.symlink(".", links / "self")
    os.symlink("does-not-exist", links / "dangling")
    os.symlink("/etc/passwd", links / "outside")
    os.symlink(dicom / "ok.dcm", links / "to-ok.dcm")
    skipped = {_abs(links / n): "symlink not followed"
               for n in ("loop_a", "loop_b", "parent", "self", "dangling", "outside", "to-ok.dcm")}
    special = root / "special"
    special.mkdir()
    os.mkfifo(special / "fifo")
    skipped[_abs(special / "fifo")] = "fifo skipped"
    try:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(special / "sock"))
            skipped[_abs(special / "sock")] = "socket skipped"
        finally:
            sock.close()
    except OSError:
        pass  # socket path too long for sun_path here: not this test's concern
    try:
        os.mknod(special / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        skipped[_abs(special / "null")] = "device file skipped"
    except (PermissionError, OSError):
        pass  # unprivileged: no device file in this tree
    return {"big": big, "skipped": skipped, "root": root}


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Any]:
    return build_hostile_tree(tmp_path / "hostile")


def test_hostile_tree_migrates_or_reports_every_file_and_never_touches_the_source(
        moto_s3: S3Target, hostile: dict[str, Any], tmp_path: Path) -> None:
    root: Path = hostile["root"]
    before = fingerprint(root)
    state, report = tmp_path / "state", tmp_path / "report.json"
    proc = run_cli(*_migrate_args(root, moto_s3, state, "--report", str(report)),
                   env=moto_s3.env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert_untouched(before, root, "after the run")

    # Killed mid-run (SIGKILL after an object is stored), then resumed: still read-only.
    # (Before anything here reads the tree normally: a first plain read moves atimes.)
    target = _fresh_target(moto_s3, "k")
    state2 = tmp_path / "state-killed"
    killed = run_cli(*_migrate_args(root, target, state2),
                     env={**target.env(), "PACSMIGRATE_CRASH_AT": "after-upload:2"}, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert_untouched(before, root, "after a killed run")
    resumed = run_cli(*_migrate_args(root, target, state2), env=target.env(), timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_untouched(before, root, "after the resumed run")
    assert_complete(target, state2, root)

    rows = assert_complete(moto_s3, state, root)
    by_name = {os.path.basename(from_fields(r["source_path"], r["source_path_b64"])): r
               for r in rows}
    for name in EXPECTED_DICOM + hostile["big"]:
        assert by_name[os.fsencode(name)]["reason"] == "", name
        assert by_name[os.fsencode(name)]["status"] == "dicom", name
    for name in hostile["big"]:  # above --large-file (4 MiB): an object of its own
        row = by_name[os.fsencode(name)]
        assert row["key"].endswith(".dcm") == (int(row["size"]) > 4 * MiB), name
    reasons = {n: by_name[os.fsencode(n)]["reason"] for n in (
        "truncated_pixels.dcm", "truncated_dataset.dcm", "half.dcm", "empty.dcm",
        "readme.txt", "random.bin", "nostudy.dcm", "gz.dcm.gz", "preamble_only.dcm",
        "dicm_then_garbage.dcm")}
    assert reasons["empty.dcm"] == "empty file"
    assert reasons["nostudy.dcm"] == "DICOM without StudyInstanceUID"
    assert reasons["readme.txt"].startswith("not DICOM")
    assert reasons["random.bin"].startswith("not DICOM")
    assert reasons["gz.dcm.gz"].startswith("not DICOM")
    for n in ("truncated_pixels.dcm", "truncated_dataset.dcm", "half.dcm"):
        assert "truncated" in reasons[n], (n, reasons[n])
    assert all(reasons.values()), reasons  # every odd file says why it is unsorted
    for raw in BYTE_NAMES + [os.fsencode(t) for t in TEXT_NAMES]:
        assert by_name[raw]["reason"] == "", raw  # odd names are still the same DICOM

    doc = _report(report)
    assert doc["not_migrated"] == []
    assert {p: s["reason"] for p, s in _by_path(doc["skipped"]).items()} == hostile["skipped"]
    unsorted = _by_path(doc["unsorted"])
    assert {os.path.basename(p).decode() for p in unsorted} == set(reasons)


def _deep_tree(root: Path, total: int = 4300) -> tuple[bytes, bytes]:
    """A file whose path is longer than PATH_MAX (4096), built with openat, and one half way."""
    root.mkdir(parents=True)
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    path = _abs(root)
    mid = b""
    level = 0
    try:
        while len(path) < total:
            name = b"level%02d-" % level + b"x" * 240
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path, level = sub, path + b"/" + name, level + 1
            if level == 3:
                out = os.open(b"mid.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.write(out, ct)
                os.close(out)
                mid = path + b"/mid.dcm"
        out = os.open(b"deep.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, ct)
        os.close(out)
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL):
            pytest.skip(f"this filesystem refuses deep paths: {exc}")
        raise
    finally:
        os.close(fd)
    return mid, path + b"/deep.dcm"


def test_path_longer_than_path_max_is_migrated_or_finally_reported(moto_s3: S3Target,
                                                                   tmp_path: Path) -> None:
    """A file under a path beyond PATH_MAX: the path as a whole cannot be opened, only
    relative to a directory fd. The run must not crash, must migrate or report it, and must
    not keep telling the operator to re-run when no re-run can help."""
    root = tmp_path / "deep"
    mid, deep = _deep_tree(root)
    assert len(deep) > 4096
    (root / "ok.dcm").write_bytes((TEST_FILES / "CT_small.dcm").read_bytes())
    before = fingerprint(root)
    state, report = tmp_path / "state", tmp_path / "report.json"
    first = run_cli(*_migrate_args(root, moto_s3, state, "--report", str(report)),
                    env=moto_s3.env(), timeout=120)
    assert first.returncode in (0, 1), first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    indexed = {from_fields(r["source_path"], r["source_path_b64"]) for r in index_rows(state)}
    assert {_abs(root / "ok.dcm"), mid} <= indexed  # 700-byte paths are fine
    doc = _report(report)
    if deep not in indexed:
        listed = _by_path(doc["not_migrated"] + doc["skipped"])
        why = [v for p, v in listed.items() if deep == p or deep.startswith(p + b"/")]
        assert why, "the deep file is neither migrated nor reported"
        assert "too long" in (why[0]["reason"] + why[0]["detail"]).lower(), why
        # Final (no re-run helps), but not a deliberate skip: the summary says so.
        assert ("path too long to open (over the system's PATH_MAX: NOT migrated, nor what a "
                "folder holds; bind-mount the folder at a shorter path") in first.stdout
    assert_untouched(before, root, "after the run")
    # Nothing changed: a second run must be able to finish (migrated, or a final skip).
    second = run_cli(*_migrate_args(root, moto_s3, state, "--report", str(report)),
                     env=moto_s3.env(), timeout=120)
    assert second.returncode == 0, (
        "a path longer than PATH_MAX stays 'NOT DONE ... re-run' forever:\n" + second.stdout)


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


# ---------------------------------------------------------------------------------------
# Real writers against the real CLI


def assert_consistent(target: S3Target, state: Path, root: Path) -> None:
    """assert_complete for a tree that changed under the runs: every file present now is in
    the index once with its current bytes; rows of files deleted since still read back to
    their blake3; an object no row points at only holds files re-migrated since; no orphan
    sidecars, no unfinished uploads."""
    files = source_files(root)
    rows: dict[bytes, dict[str, str]] = {}
    for r in index_rows(state):
        p = from_fields(r["source_path"], r["source_path_b64"])
        assert p not in rows, f"{p!r} twice in the index"
        rows[p] = r
    assert set(files) <= set(rows), f"not migrated: {sorted(set(files) - set(rows))[:5]}"
    for p, r in rows.items():
        length = int(r["length"])
        data = target.get(r["key"], int(r["offset"]), length) if length else b""
        assert blake3.blake3(data).hexdigest() == r["blake3"], p
        if p in files:
            assert data == files[p].read_bytes(), f"stored bytes differ for {p!r}"
    keys = [k for k in target.object_keys() if RUN_DIR not in k.split("/")]  # our records
    data_keys = {k for k in keys if not k.endswith(".json")}
    raw_keys = {k for k in data_keys if not k.endswith(".tar")}
    sidecars = {k for k in keys if k.endswith(".json") and not k.endswith("pacsmigrate.json")}
    assert {k.rsplit(".", 1)[0] for k in sidecars} == {k.rsplit(".", 1)[0] for k in raw_keys}
    referenced = {r["key"] for r in rows.values()}
    for key in data_keys - referenced:
        if key in raw_keys:
            doc = json.loads(target.get(key.rsplit(".", 1)[0] + ".json"))
        else:
            data = target.get(key)
            where = read_trailer(data[-TAIL:])
            assert where is not None, f"bundle without a trailer: {key}"
            doc = parse(data[where[0]:where[0] + where[1]])
        for m in doc["members"]:
            p = from_fields(m["source_path"], m["source_path_b64"])
            assert p in rows and rows[p]["key"] != key, f"orphan object {key}"
    assert target.pending_uploads() == []


def test_real_writers_during_a_cli_run(moto_s3: S3Target, tmp_path: Path) -> None:
    """While `pacsmigrate migrate` runs: new files appear (in old and new directories),
    whole directories vanish, and a file grows. The run must not crash; the next run (the
    tree quiet again) finishes with exit 0 and the store matches the tree."""
    root = tmp_path / "nas"
    make_tree(root / "date", studies=12, seed=31, layout="date", scale=0.05)
    make_tree(root / "patient", studies=4, seed=32, layout="patient", scale=0.05)
    growing = root / "growing.dcm"
    shutil.copy(TEST_FILES / "CT_small.dcm", growing)
    staging = tmp_path / "staging"
    staging.mkdir()
    doomed = sorted(p for p in (root / "date").glob("*/*/*/*/*") if p.is_dir())[::2]
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    stop = threading.Event()
    created: list[Path] = []
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                while not stop.is_set():
                    fn()
            except BaseException as exc:  # noqa: BLE001 - surfaced by the test below
                errors.append(exc)
        return body

    counter = iter(range(10**6))

    def create() -> None:
        n = next(counter)
        tmp = staging / f"{n}.part"
        tmp.write_bytes(ct)  # written in full elsewhere, then renamed in: never half-seen
        dest = root / "incoming" / f"d{n % 7}" / (f"new{n}" if n % 5 == 0 else "") / f"{n}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, dest)
        created.append(dest)
        time.sleep(0.01)

    def delete() -> None:
        if doomed and (state / "checkpoint.lmdb").exists():  # once the run has begun
            shutil.rmtree(doomed.pop(), ignore_errors=True)
        time.sleep(0.15)

    def grow() -> None:
        with open(growing, "ab") as f:
            f.write(b"\0" * 4096)
        time.sleep(0.002)

    state, report = tmp_path / "state", tmp_path / "report.json"
    args = [sys.executable, "-m", "pacsmigrate",
            *_migrate_args(root, moto_s3, state, "--report", str(report), "--concurrency", "2",
                           "--read-threads", "2", "--bwlimit", "4MiB")]
    proc = subprocess.Popen(args, env=moto_s3.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    threads = [threading.Thread(target=guarded(fn)) for fn in (create, delete, grow)]
    for t in threads:
        t.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert proc.returncode in (0, 1), out + err
    assert "Traceback" not in err, err
    assert created, "the writer created nothing during the run"
    doc = _report(report)
    for item in doc["not_migrated"]:  # whatever is left says why
        assert item["reason"], item

    second = run_cli(*_migrate_args(root, moto_s3, state), env=moto_s3.env(), timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert_consistent(moto_s3, state, root)
    third = run_cli(*_migrate_args(root, moto_s3, state), env=moto_s3.env(), timeout=120)
    assert third.returncode == 0 and "migrated now: 0 files" in third.stdout, third.stdout


def test_files_appearing_during_a_run_are_migrated_now_or_by_the_next(moto_s3: S3Target,
                                                                     tmp_path: Path) -> None:
    """A modality keeps storing while the CLI runs: files renamed into old and new folders.
    Each is migrated by this run or the next; after the next, the store matches the tree."""
    root = tmp_path / "nas"
    make_tree(root / "date", studies=8, seed=33, layout="date", scale=0.05)
    staging = tmp_path / "staging"
    staging.mkdir()
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    existing = sorted(p for p in (root / "date").glob("*/*/*/*/*") if p.is_dir())
    stop = threading.Event()
    created: list[Path] = []

    def store() -> None:
        n = 0
        while not stop.is_set():
            tmp = staging / f"{n}.part"
            tmp.write_bytes(ct)
            folder = existing[n % len(existing)] if n % 2 else root / "new" / f"s{n // 10}"
            folder.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, folder / f"IM{n:05d}")
            created.append(folder / f"IM{n:05d}")
            n += 1
            time.sleep(0.01)

    state = tmp_path / "state"
    args = [sys.executable, "-m", "pacsmigrate",
            *_migrate_args(root, moto_s3, state, "--bwlimit", "4MiB")]
    proc = subprocess.Popen(args, env=moto_s3.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    writer = threading.Thread(target=store)
    writer.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        writer.join()
    assert proc.returncode == 0, out + err
    first = {from_fields(r["source_path"], r["source_path_b64"]) for r in index_rows(state)}
    new = {_abs(p) for p in created}
    assert new & first and new - first, "both cases (this run, the next run) must occur"
    second = run_cli(*_migrate_args(root, moto_s3, state), env=moto_s3.env(), timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"migrated now: {len(new - first):,} files" in second.stdout, second.stdout
    assert_complete(moto_s3, state, root)


def test_source_files_are_opened_read_only_without_touching_atime(moto_s3: S3Target,
                                                                  tmp_path: Path) -> None:
    """Watch the running CLI's open descriptors (/proc/PID/fdinfo): every one on a source file
    is O_RDONLY (and O_NOATIME where the kernel allows it). A bandwidth cap keeps a 6 MiB
    file open long enough to be seen."""
    root = tmp_path / "src"
    root.mkdir()
    big = root / "big.dcm"
    big.write_bytes((TEST_FILES / "CT_small.dcm").read_bytes() + os.urandom(6 * MiB))
    for i in range(20):
        shutil.copy(TEST_FILES / "MR_small.dcm", root / f"mr{i}.dcm")
    before = fingerprint(root)
    prefix = str(root) + "/"
    args = [sys.executable, "-m", "pacsmigrate",
            *_migrate_args(root, moto_s3, tmp_path / "state", "--large-file", "1MiB",
                           "--bwlimit", "3MiB")]
    proc = subprocess.Popen(args, env=moto_s3.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: dict[str, int] = {}
    while proc.poll() is None:
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
        except FileNotFoundError:
            break
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                if not target.startswith(prefix):
                    continue
                with open(f"/proc/{proc.pid}/fdinfo/{fd}") as info:
                    flags = next(int(line.split()[1], 8) for line in info
                                 if line.startswith("flags:"))
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                continue
            seen[target] = flags
        time.sleep(0.005)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert str(big) in seen, f"never saw the big file open; saw {sorted(seen)[:3]}"
    for path, flags in seen.items():
        assert flags & os.O_ACCMODE == os.O_RDONLY, (path, oct(flags))
        assert flags & getattr(os, "O_NOATIME", 0), (path, "opened without O_NOATIME")
    assert_untouched(before, root, "after the run")


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
