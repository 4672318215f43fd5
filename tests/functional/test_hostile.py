"""Hostile source trees: every file ends up migrated or reported with its reason, the run never
crashes, and the source is only ever read (bytes, sizes, times and listings stay identical).

This file: the static hostile tree (odd DICOM, odd names, links, loops, special files; a run
killed and resumed on it) and a path longer than PATH_MAX. Races made deterministic are in
test_hostile_races.py, real writers against the real CLI in test_hostile_writers.py; the
fingerprint and the report helpers in hostile_support.py.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import TEST_FILES, S3Target, run_cli
from helpers import MiB, assert_complete, index_rows
from hostile_support import (
    _abs,
    _by_path,
    _migrate_args,
    _pydicom_data,
    _report,
    assert_untouched,
    fingerprint,
)

from pacsmigrate.paths import from_fields


def _fresh_target(like: S3Target, suffix: str) -> S3Target:
    target = S3Target(like.info, f"{like.bucket}-{suffix}", like.kind)
    target.client.create_bucket(Bucket=target.bucket)
    return target


# ---------------------------------------------------------------------------------------
# The static hostile tree


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
