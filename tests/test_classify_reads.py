"""The read stage, how it reads: a file gone or replaced (by a link, by a fifo that must not
block) is a problem; a dry run hashes whole files; short reads and a file that grows before
it is read still give the whole file; a file the index holds unchanged is not opened."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import blake3
import classify_support
import pytest
from classify_support import SECRET, cat, classify
from helpers import call_unblocked

from pacsmigrate.read import ReadOptions, read_files
from pacsmigrate.records import DICOM, Problem

# The read-only samples: a fixture defined once in classify_support.
samples = classify_support.samples


def test_missing_file_is_problem(tmp_path: Path) -> None:
    path = os.fsencode(tmp_path / "gone.dcm")
    got = classify(path)
    assert got == Problem(path, "vanished before read")
    assert got.final


def test_replaced_by_symlink_is_problem(samples: Path, tmp_path: Path) -> None:
    link = tmp_path / "was-a-file.dcm"
    link.symlink_to(samples / "CT_small.dcm")
    got = classify(link)
    assert isinstance(got, Problem)
    assert got.reason == "symlink not followed"


def test_replaced_by_fifo_does_not_block(tmp_path: Path) -> None:
    """A file replaced by a FIFO between scan and read must not hang a reader thread.

    The read opens before it checks the file type, and open(O_RDONLY) of a FIFO blocks
    until a writer appears: it opens with O_NONBLOCK.
    """
    fifo = tmp_path / "was-a-file.dcm"
    os.mkfifo(fifo)
    got = call_unblocked(lambda: classify(fifo), fifo, what="the read stage")
    assert isinstance(got, Problem)
    assert got.reason == "not a regular file any more"


def test_hash_all_is_blake3_of_whole_file(samples: Path) -> None:
    for name in ("CT_small.dcm", "README.txt", "MR_truncated.dcm"):
        path = samples / name
        rec = cat(path, hash_all=True, hold_max=0)
        assert rec.blake3 == blake3.blake3(path.read_bytes()).hexdigest()
        assert rec.data is None  # a dry run keeps no bytes
    assert cat(samples / "CT_small.dcm", hold_max=0).blake3 == ""


class _Os:
    """The os module as pacsmigrate.source sees it, with `read` replaced."""

    def __init__(self, read: Any) -> None:
        self.read = read

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_short_reads_still_give_the_whole_file(samples: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # NFS and FUSE may return fewer bytes than asked before the end of the file.
    from pacsmigrate import source
    path = tmp_path / "ct.dcm"
    shutil.copyfile(samples / "CT_small.dcm", path)
    calls: list[int] = []

    def short(fd: int, n: int) -> bytes:
        calls.append(n)
        return os.read(fd, min(n, 1000))
    monkeypatch.setattr(source, "os", _Os(short))
    rec = cat(path)
    assert len(calls) > path.stat().st_size // 1000  # the short reads did happen
    assert rec.data == path.read_bytes() and rec.size == len(rec.data)
    assert rec.blake3 == blake3.blake3(rec.data).hexdigest()
    assert rec.status == DICOM


def test_a_file_that_grows_before_it_is_read_is_read_again_whole(
        samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One read gives a small file: the fstat after it must catch a file that grew since
    # the fstat before it (the read then returns more than that size).
    from pacsmigrate import source
    path = tmp_path / "ct.dcm"
    shutil.copyfile(samples / "CT_small.dcm", path)
    grown = [False]

    def growing(fd: int, n: int) -> bytes:
        if not grown[0]:
            grown[0] = True
            with open(path, "ab") as f:
                f.write(b"\0" * 10)
        return os.read(fd, n)
    monkeypatch.setattr(source, "os", _Os(growing))
    rec = cat(path)
    assert grown[0]
    assert rec.size == path.stat().st_size == (samples / "CT_small.dcm").stat().st_size + 10
    assert rec.data == path.read_bytes()
    assert rec.blake3 == blake3.blake3(path.read_bytes()).hexdigest()


class _Index:
    """The index as read_files asks it (`migrated`): (size, mtime_ns) a path was stored with."""

    def __init__(self, rows: dict[bytes, tuple[int, int]]) -> None:
        self.rows = rows

    def migrated(self, paths: list[bytes]) -> list[tuple[int, int] | None]:
        return [self.rows.get(p) for p in paths]


def test_files_the_index_holds_unchanged_are_not_opened(samples: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run finds an unchanged file by one lstat: no open (a NAS round trip or three
    saved a file). A changed file, a file swapped for a link, and a file the index does not
    hold are opened and read as before."""
    names = [b"same", b"grown", b"touched", b"link", b"new"]
    for n in names[:4]:
        shutil.copyfile(samples / "CT_small.dcm", tmp_path / n.decode())
    shutil.copyfile(samples / "MR_small.dcm", tmp_path / "new")
    d = os.fsencode(tmp_path)
    rows = {d + b"/" + n: (os.stat(tmp_path / n.decode()).st_size,
                           os.stat(tmp_path / n.decode()).st_mtime_ns) for n in names[:4]}
    with open(tmp_path / "grown", "ab") as f:
        f.write(b"\0\0")
    st = os.stat(tmp_path / "touched")
    os.utime(tmp_path / "touched", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    target = tmp_path / "elsewhere"
    os.rename(tmp_path / "link", target)
    os.symlink(target, tmp_path / "link")
    opened: list[bytes] = []
    real_open = os.open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fsencode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    got = read_files(d, names, ReadOptions(SECRET, skip_migrated=True), _Index(rows))
    assert got.migrated == 1 and got.seen == 4 and got.listed == 5
    assert sorted(m.path for m in got.members) == [d + b"/grown", d + b"/new", d + b"/touched"]
    assert [p.path for p in got.problems] == [d + b"/link"]  # never followed, as before
    assert d + b"/same" not in opened
    assert {d + b"/grown", d + b"/touched", d + b"/new"} <= set(opened)
